//! The version and revision this binary was built from, as `sds --version` and
//! `spdk_get_version` report them.

/// The crate version (`major.minor.patch`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision the binary was built from, or `unknown` outside a git checkout.
pub const GIT_REVISION: &str = env!("SDS_GIT_REVISION");

/// `sds 0.1.0 (rev 0123456789ab)`: the one-line form.
pub fn long_version() -> String {
    format!("sds {VERSION} (rev {GIT_REVISION})")
}
