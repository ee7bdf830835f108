//! SSH key pairs made by leasefs for `ssh/sign/<role>` (`generate_key: "ed25519"`): an Ed25519
//! key in OpenSSH's own formats — the public line OpenBao signs, the private key a client uses —
//! and the `ValidBefore` a signed certificate states.

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

/// Reads the wire format of a certificate blob (RFC 4251 strings and integers).
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The end of validity an OpenSSH certificate line (`<type>-cert-v01@openssh.com <base64> …`)
/// states: its `valid before`, or the latest time there is for one "valid forever". None when
/// the line is not a certificate this reads (PROTOCOL.certkeys).
pub fn cert_valid_before(line: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let mut parts = line.split_whitespace();
    let kind = parts.next()?;
    let blob = base64::engine::general_purpose::STANDARD.decode(parts.next()?).ok()?;
    // The public key's own fields between the nonce and the serial, by certificate type.
    let key_fields = match kind {
        "ssh-ed25519-cert-v01@openssh.com" => 1,
        "ssh-rsa-cert-v01@openssh.com" | "sk-ssh-ed25519-cert-v01@openssh.com" => 2,
        "ssh-dss-cert-v01@openssh.com" => 4,
        k if k.starts_with("ecdsa-sha2-") && k.ends_with("-cert-v01@openssh.com") => 2,
        k if k.starts_with("sk-ecdsa-sha2-") && k.ends_with("-cert-v01@openssh.com") => 3,
        _ => return None,
    };
    let mut w = Wire(&blob);
    if w.string()? != kind.as_bytes() {
        return None;
    }
    w.string()?; // nonce
    for _ in 0..key_fields {
        w.string()?;
    }
    w.u64()?; // serial
    w.u32()?; // user or host
    w.string()?; // key id
    w.string()?; // principals
    w.u64()?; // valid after
    let before = w.u64()?;
    Some(
        i64::try_from(before)
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
    )
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

    #[test]
    fn a_certificate_signed_by_ssh_keygen_states_its_valid_before() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let keygen = |args: &[&str]| {
            let o = std::process::Command::new("ssh-keygen").args(args).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        keygen(&["-q", "-t", "ed25519", "-N", "", "-f", ca.to_str().unwrap()]);
        for kind in ["ed25519", "ecdsa", "rsa"] {
            let user = dir.path().join(kind);
            keygen(&["-q", "-t", kind, "-N", "", "-f", user.to_str().unwrap()]);
            let validity = "20300101000000Z:20300102030405Z";
            keygen(&[
                "-q",
                "-s",
                ca.to_str().unwrap(),
                "-I",
                "id",
                "-n",
                "deploy",
                "-V",
                validity,
                user.to_str().unwrap(),
            ]);
            let line = std::fs::read_to_string(dir.path().join(format!("{kind}-cert.pub"))).unwrap();
            let end = cert_valid_before(&line).map(|t| t.to_rfc3339());
            assert_eq!(end.as_deref(), Some("2030-01-02T03:04:05+00:00"), "{kind}");
        }
        assert_eq!(cert_valid_before("ssh-ed25519 AAAA x"), None);
    }
}
