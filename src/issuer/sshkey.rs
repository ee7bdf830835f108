//! SSH key pairs made by leasefs for `ssh/sign/<role>` (`generate_key: "ed25519"`): an Ed25519
//! key in OpenSSH's own formats — the public line OpenBao signs, the private key a client uses.

use base64::Engine;
use zeroize::Zeroizing;

/// A fresh key pair: the private key (OpenSSH PEM, zeroized when dropped) and the public line.
pub struct KeyPair {
    pub private_pem: Zeroizing<String>,
    pub public: String,
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Makes an Ed25519 key pair; `comment` goes in both halves (e.g. the lease id).
pub fn generate_ed25519(comment: &str) -> KeyPair {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *seed).expect("the OS random source");
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = signing.verifying_key().to_bytes();
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-ed25519");
    put_string(&mut blob, &public);
    let b64 = base64::engine::general_purpose::STANDARD;

    // openssh-key-v1, unencrypted: one key, its private section padded to a multiple of 8.
    let mut check = [0u8; 4];
    getrandom::fill(&mut check).expect("the OS random source");
    let mut private = Zeroizing::new(Vec::new());
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, b"ssh-ed25519");
    put_string(&mut private, &public);
    let mut keypair = Zeroizing::new([0u8; 64]);
    keypair[..32].copy_from_slice(&*seed);
    keypair[32..].copy_from_slice(&public);
    put_string(&mut private, &*keypair);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut body = Zeroizing::new(b"openssh-key-v1\0".to_vec());
    put_string(&mut body, b"none");
    put_string(&mut body, b"none");
    put_string(&mut body, b"");
    body.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut body, &blob);
    put_string(&mut body, &private);
    let encoded = Zeroizing::new(b64.encode(&*body));
    let mut pem = Zeroizing::new(String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
    for line in encoded.as_bytes().chunks(70) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    KeyPair { private_pem: pem, public: format!("ssh-ed25519 {} {comment}", b64.encode(&blob)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keygen_reads_the_private_key_back_to_its_public_half() {
        let k = generate_ed25519("lease-1");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id");
        std::fs::write(&p, k.private_pem.as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let o = std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(&p).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let derived = String::from_utf8(o.stdout).unwrap();
        assert_eq!(derived.split_whitespace().nth(1), k.public.split_whitespace().nth(1));
    }
}
