//! The issuers by kind: one of each built into this binary, or test issuers put in their place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Issuer, aws, azure, exec, jwt, openbao, postgres};
use crate::policy::IssuerKind;

/// The issuers by kind (`attributes.type` of a base secret).
#[derive(Clone, Default)]
pub struct Issuers {
    by_kind: HashMap<IssuerKind, Arc<dyn Issuer>>,
    /// Who may own the programs that are run (exec scripts, `rotate_command`).
    pub trust: crate::trust::Trust,
}

impl Issuers {
    /// The issuers built into this binary, one per [`IssuerKind`]; `timeout` bounds their network
    /// calls; `strict_perms` refuses programs others could have changed.
    pub fn builtin(timeout: Duration, strict_perms: bool) -> Self {
        let trust = crate::trust::Trust::new(strict_perms);
        let mut i = Issuers { trust, ..Issuers::default() };
        for kind in IssuerKind::ALL {
            let issuer: Arc<dyn Issuer> = match kind {
                IssuerKind::Exec => Arc::new(exec::ExecIssuer { trust }),
                IssuerKind::Jwt => Arc::new(jwt::JwtIssuer),
                IssuerKind::Postgres => Arc::new(postgres::PostgresIssuer::new(timeout)),
                IssuerKind::Aws => Arc::new(aws::AwsIssuer::new(timeout)),
                IssuerKind::Openbao => Arc::new(openbao::OpenBaoIssuer::new(timeout)),
                IssuerKind::Azure => Arc::new(azure::AzureIssuer::new(timeout)),
            };
            i.insert(kind, issuer);
        }
        i
    }

    /// Puts `issuer` in place for `kind` (tests put a test issuer in place of a real one).
    pub fn insert(&mut self, kind: IssuerKind, issuer: Arc<dyn Issuer>) {
        self.by_kind.insert(kind, issuer);
    }

    pub fn get(&self, kind: IssuerKind) -> Option<Arc<dyn Issuer>> {
        self.by_kind.get(&kind).cloned()
    }
}
