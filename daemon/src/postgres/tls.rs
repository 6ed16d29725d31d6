//! TLS to the PostgreSQL server: libpq's `sslmode` and `sslrootcert` URL parameters, with
//! libpq's meanings, over rustls (the `ring` provider; no platform certificate store).
//!
//! [`take_params`] takes every `ssl*` parameter out of a URL before the driver parses it
//! (the driver knows only `disable | prefer | require` and no `sslrootcert`) and refuses
//! the ones homerd does not support; [`Tls::new`] loads the root certificates once, when
//! the URL is parsed, so a missing or bad file is refused before anything connects; and
//! [`Tls::connector`] is what `Target::connect` hands the driver. [`explain`] turns a
//! failed connect into an error that says what TLS had to do with it.
//!
//! What each mode checks (README, PostgreSQL, TLS):
//! - `disable` (and no `sslmode` at all: homerd's default, unlike libpq's `prefer`): plain;
//! - `prefer`: TLS when the server offers it, plain when it does not; the certificate is
//!   not checked (libpq's meaning) unless `sslrootcert` names roots;
//! - `require`: TLS or no connection; the certificate is not checked unless `sslrootcert`
//!   names roots, when it is checked as under `verify-ca` (libpq's rule);
//! - `verify-ca`: TLS, and the certificate must chain to a root in `sslrootcert` (default
//!   `~/.postgresql/root.crt`, as libpq);
//! - `verify-full`: `verify-ca`, and the certificate must be for the host name (or IP
//!   address) the URL names.
//!
//! Whatever the mode, the handshake's signatures are verified with the certificate's key,
//! so an unchecked certificate still means the session is encrypted to whoever holds it.
//! TLS is never attempted over a unix socket (the server does not offer it there; libpq
//! ignores `sslmode` for sockets too).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{exit, Error, Result};

/// libpq's `sslmode` values that homerd supports (`allow` is not one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }

    /// The driver's mode: it decides only whether TLS is tried and whether it is required;
    /// what is verified is the verifier's business.
    pub fn driver(self) -> postgres::config::SslMode {
        match self {
            Mode::Disable => postgres::config::SslMode::Disable,
            Mode::Prefer => postgres::config::SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => postgres::config::SslMode::Require,
        }
    }
}

/// The TLS parameters of a URL, taken out of it by [`take_params`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub mode: Mode,
    /// `sslrootcert`, percent-decoded.
    pub root_cert: Option<PathBuf>,
}

/// The `ssl*` parameters libpq knows that homerd refuses, and why (what to do instead).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("sslcert", "client certificates are not supported: authenticate with a password (in the URL or `password=`) or trust rules"),
    ("sslkey", "client certificates are not supported: authenticate with a password (in the URL or `password=`) or trust rules"),
    ("sslpassword", "client certificates are not supported"),
    ("sslcertmode", "client certificates are not supported"),
    ("sslcrl", "certificate revocation lists are not supported"),
    ("sslcrldir", "certificate revocation lists are not supported"),
    ("sslsni", "homerd always sends the host name (SNI) when the URL names a host name"),
    ("sslcompression", "TLS compression is not supported (nor by current servers)"),
    ("sslnegotiation", "only PostgreSQL's own negotiation (the default, `postgres`) is supported"),
    ("ssl_min_protocol_version", "homerd offers TLS 1.2 and 1.3"),
    ("ssl_max_protocol_version", "homerd offers TLS 1.2 and 1.3"),
];

/// Splits `url` into the URL the driver parses (every `ssl*` parameter removed) and the
/// TLS parameters. `shown` is the redacted URL, the only form an error may show. Refused
/// (64): an unknown `sslmode`, `sslmode=allow`, `sslrootcert=system`, an `ssl*` parameter
/// homerd does not support, a parameter given twice.
pub fn take_params(url: &str, shown: &str) -> Result<(String, Params)> {
    // As the driver reads a URL: credentials up to the first '@', then the query from
    // the first '?' after them.
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let creds_end = url[after_scheme..].find('@').map_or(after_scheme, |i| after_scheme + i + 1);
    let Some(q) = url[creds_end..].find('?').map(|i| creds_end + i) else {
        return Ok((url.to_owned(), Params { mode: Mode::Disable, root_cert: None }));
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root_cert = None;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        if !key.starts_with("ssl") {
            kept.push(param);
            continue;
        }
        let value = percent_decode(value)
            .ok_or_else(|| Error::Usage(format!("{shown}: `{key}`: its value is not valid percent-encoded UTF-8")))?;
        match key {
            "sslmode" => {
                let m = match value.as_str() {
                    "disable" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    "allow" => {
                        return Err(Error::Usage(format!(
                            "{shown}: sslmode=allow is not supported; use disable (plain), prefer (TLS when the \
                             server offers it) or require (TLS always)"
                        )))
                    }
                    other => {
                        return Err(Error::Usage(format!(
                            "{shown}: sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                        )))
                    }
                };
                if mode.replace(m).is_some() {
                    return Err(Error::Usage(format!("{shown}: sslmode is given twice; give it once")));
                }
            }
            "sslrootcert" => {
                if value == "system" {
                    return Err(Error::Usage(format!(
                        "{shown}: sslrootcert=system is not supported (homerd reads no platform certificate \
                         store); name the PEM file of the CA that signed the server's certificate, \
                         sslrootcert=/path/to/root.crt"
                    )));
                }
                if value.is_empty() {
                    return Err(Error::Usage(format!("{shown}: sslrootcert is empty; name a PEM file")));
                }
                if root_cert.replace(PathBuf::from(value)).is_some() {
                    return Err(Error::Usage(format!("{shown}: sslrootcert is given twice; give it once")));
                }
            }
            _ => {
                let why = UNSUPPORTED
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or("it is not a parameter homerd knows", |(_, w)| w);
                return Err(Error::Usage(format!(
                    "{shown}: `{key}` is not supported ({why}); homerd's TLS parameters are sslmode and sslrootcert"
                )));
            }
        }
    }
    let stripped = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((stripped, Params { mode: mode.unwrap_or(Mode::Disable), root_cert }))
}

/// `%XX` decoded (as the driver decodes values); `None` for a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A URL's TLS, ready to connect with: the mode and, when TLS may be used, the connector
/// (its roots loaded).
#[derive(Clone)]
pub struct Tls {
    pub mode: Mode,
    /// The root certificate file in use, if any (named in errors).
    pub roots_from: Option<PathBuf>,
    connector: Option<MakeRustlsConnect>,
}

impl Tls {
    /// Loads what `params` need. `home` is the user's home directory, for libpq's default
    /// root file (`~/.postgresql/root.crt`) under `verify-*`. Errors name the file: 66 when
    /// it does not exist (or is not a file), 77 when it cannot be read for permission, 78
    /// when it holds no usable certificate.
    pub fn new(params: &Params, shown: &str, home: Option<&Path>) -> Result<Tls> {
        let mode = params.mode;
        if mode == Mode::Disable {
            return Ok(Tls { mode, roots_from: None, connector: None });
        }
        let verify = matches!(mode, Mode::VerifyCa | Mode::VerifyFull);
        let roots_from = match &params.root_cert {
            Some(path) => Some(path.clone()),
            None if verify => {
                let Some(default) = home.map(|h| h.join(".postgresql/root.crt")) else {
                    return Err(Error::Postgres {
                        target: shown.to_owned(),
                        message: format!(
                            "sslmode={} verifies the server's certificate, but no root certificate is named \
                             (sslrootcert=FILE) and there is no home directory ($HOME) for libpq's default \
                             ~/.postgresql/root.crt; name the PEM file of the CA that signed the server's certificate",
                            mode.name()
                        ),
                        code: exit::NOT_FOUND,
                    });
                };
                if !default.exists() {
                    return Err(Error::Postgres {
                        target: shown.to_owned(),
                        message: format!(
                            "sslmode={} verifies the server's certificate, but no root certificate is named \
                             (sslrootcert=FILE) and the default {} does not exist; name the PEM file of the \
                             CA that signed the server's certificate, or use sslmode=require (encrypted, the \
                             server's identity not checked)",
                            mode.name(),
                            default.display()
                        ),
                        code: exit::NOT_FOUND,
                    });
                }
                Some(default)
            }
            None => None,
        };
        // ring, by choice (daemon/Cargo.toml): rustls 0.23.48 marks it deprecated for
        // lacking post-quantum key exchange, which PostgreSQL servers (OpenSSL's defaults)
        // do not offer today either; aws-lc-rs, which has it, needs a C toolchain and cmake.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = match &roots_from {
            Some(path) => {
                let roots = load_roots(path, shown)?;
                let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::Internal(format!("building the certificate verifier: {e}")))?;
                Some(v)
            }
            None => None,
        };
        let verifier = Verifier { chain, check_name: mode == Mode::VerifyFull, provider: provider.clone() };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS protocol versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // What libpq 17 sends; a server of 17 or later refuses another protocol name, an
        // older one ignores it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Tls { mode, roots_from, connector: Some(MakeRustlsConnect::new(config)) })
    }

    /// The driver's TLS hook, when TLS may be used.
    pub fn connector(&self) -> Option<MakeRustlsConnect> {
        self.connector.clone()
    }

    /// What the mode checks of the server, in a few words (for errors).
    fn checks(&self) -> String {
        match (&self.roots_from, self.mode) {
            (Some(roots), Mode::VerifyFull) => {
                format!("its certificate must chain to a root in {} and name the host", roots.display())
            }
            (Some(roots), _) => format!("its certificate must chain to a root in {}", roots.display()),
            (None, _) => String::from("its certificate is not checked under this sslmode"),
        }
    }
}

/// The certificates of a PEM file, as trust anchors.
fn load_roots(path: &Path, shown: &str) -> Result<RootCertStore> {
    let fail = |code: i32, what: String| Error::Postgres {
        target: shown.to_owned(),
        message: format!("sslrootcert {}: {what}", path.display()),
        code,
    };
    let bytes = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(fail(exit::NOT_FOUND, String::from("is not a file; name the PEM file of the server's root CA")))
        }
        Ok(_) => std::fs::read(path),
        Err(e) => Err(e),
    }
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            fail(exit::NOT_FOUND, String::from("does not exist; name the PEM file of the server's root CA"))
        }
        std::io::ErrorKind::PermissionDenied => {
            fail(exit::PERMISSION, format!("cannot be read: {e}; give this user read access to it"))
        }
        _ => fail(exit::IO, format!("cannot be read: {e}")),
    })?;
    let mut roots = RootCertStore::empty();
    for (n, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| fail(exit::CONFIG, format!("is not a valid PEM file ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| fail(exit::CONFIG, format!("certificate {} cannot be a trust anchor: {e}", n + 1)))?;
    }
    if roots.is_empty() {
        return Err(fail(
            exit::CONFIG,
            String::from("holds no certificate (a PEM file with -----BEGIN CERTIFICATE----- blocks)"),
        ));
    }
    Ok(roots)
}

/// The one certificate verifier, for every mode that uses TLS: with roots it checks the
/// chain (and under `verify-full` the name, last, as webpki does); without, it accepts the
/// certificate. Either way the handshake's signatures are checked against its key.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // webpki checks the name after the chain: this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A failed connect as an error that says what TLS had to do with it, or `None` when it
/// had nothing to do with it. TLS failures that trying again cannot fix are 78 (the
/// server's certificate not trusted or not for the host, a server without TLS under
/// `require`); a server that accepts this client only over TLS keeps its 77 (refused
/// credentials) with a hint.
pub fn explain(shown: &str, tls: &Tls, e: &postgres::Error) -> Option<Error> {
    let chain = || {
        let mut causes = Vec::new();
        let mut next = std::error::Error::source(e);
        while let Some(cause) = next {
            causes.push(cause);
            next = cause.source();
        }
        causes
    };
    if let Some(db) = e.as_db_error() {
        // pg_hba.conf has a `hostssl` line for this client and no `host` one.
        if tls.mode == Mode::Disable && db.message().contains("no encryption") {
            return Some(Error::Postgres {
                target: shown.to_owned(),
                message: format!(
                    "connect: {}; the server accepts this client only over TLS: add sslmode=verify-full \
                     with sslrootcert=FILE (or sslmode=require) to the URL",
                    db.message()
                ),
                code: exit::PERMISSION,
            });
        }
        return None;
    }
    let causes = chain();
    // rustls's error reaches the driver inside an io::Error, whose `source` skips it.
    let rustls_error = causes.iter().find_map(|c| {
        c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        })
    });
    let no_tls = causes.iter().any(|c| c.to_string() == "server does not support TLS");
    let no_host = causes.iter().any(|c| c.to_string() == "no hostname provided for TLS handshake");
    let message = if let Some(re) = rustls_error {
        let hint = match re {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => String::from(
                "the server's certificate is not for the host name the URL names (verify-full checks it): \
                 connect by a name the certificate lists, or fix the server's certificate",
            ),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                format!(
                    "the server's certificate is not signed by a root in {}: name the CA that signed it (sslrootcert)",
                    tls.roots_from.as_deref().map_or_else(|| String::from("sslrootcert"), |p| p.display().to_string())
                )
            }
            rustls::Error::InvalidCertificate(_) => format!("the server's certificate was refused ({})", tls.checks()),
            _ => format!("the TLS handshake with the server failed ({})", tls.checks()),
        };
        format!("connect over TLS (sslmode={}): {re}; {hint}", tls.mode.name())
    } else if no_tls {
        format!(
            "connect: sslmode={} asks for TLS and the server does not offer it (its `ssl` setting is off): \
             turn it on, or use sslmode=prefer or disable",
            tls.mode.name()
        )
    } else if no_host {
        format!(
            "connect: sslmode={} needs a host name for TLS and the URL gives only an address (hostaddr=): \
             name the host too (host=)",
            tls.mode.name()
        )
    } else {
        return None;
    };
    Some(Error::Postgres { target: shown.to_owned(), message, code: exit::CONFIG })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(url: &str) -> Result<(String, Params)> {
        take_params(url, &crate::postgres::redact(url))
    }

    #[test]
    fn the_tls_parameters_are_taken_out_and_the_rest_kept_in_order() {
        let (url, p) = take("postgres://u:p?w@h:1/db?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fa%20b%2Fca.pem&application_name=x").unwrap();
        assert_eq!(url, "postgres://u:p?w@h:1/db?connect_timeout=3&application_name=x");
        assert_eq!(p, Params { mode: Mode::VerifyFull, root_cert: Some(PathBuf::from("/a b/ca.pem")) });
        let (url, p) = take("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!((url.as_str(), p.mode, p.root_cert), ("postgresql://h/db", Mode::Require, None));
        // No sslmode: plain, as before TLS was supported (not libpq's `prefer`).
        let (url, p) = take("postgres://h/db").unwrap();
        assert_eq!((url.as_str(), p.mode), ("postgres://h/db", Mode::Disable));
        let (_, p) = take("postgres://h/db?host=/run/x&sslmode=prefer").unwrap();
        assert_eq!(p.mode, Mode::Prefer);
    }

    #[test]
    fn unsupported_or_bad_tls_parameters_are_usage_errors_without_the_password() {
        for (query, says) in [
            ("sslmode=allow", "sslmode=allow is not supported"),
            ("sslmode=strict", "not one of disable, prefer, require, verify-ca, verify-full"),
            ("sslmode=require&sslmode=disable", "given twice"),
            ("sslcert=/c.pem&sslkey=/k.pem", "`sslcert` is not supported (client certificates"),
            ("sslkey=/k.pem", "`sslkey` is not supported"),
            ("sslkey=/k.pem&sslpassword=secret3", "`sslkey` is not supported"),
            ("sslpassword=secret3", "`sslpassword` is not supported"),
            ("sslrootcert=system", "sslrootcert=system is not supported"),
            ("sslrootcert=", "sslrootcert is empty"),
            ("sslrootcert=%ZZ", "not valid percent-encoded"),
            ("sslfoo=1", "`sslfoo` is not supported (it is not a parameter homerd knows)"),
        ] {
            let url = format!("postgres://u:secret@h/db?password=secret2&{query}");
            let e = take(&url).err().unwrap_or_else(|| panic!("{query}: accepted"));
            assert_eq!(e.exit_code(), exit::USAGE, "{query}");
            let msg = e.to_string();
            assert!(msg.contains(says), "{query}: {msg}");
            assert!(!msg.contains("secret"), "{query}: {msg}");
        }
    }

    #[test]
    fn a_root_file_that_is_missing_unreadable_or_not_pem_is_named_with_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let shown = "postgres://u:***@h/db";
        let params = |p: &Path| Params { mode: Mode::VerifyFull, root_cert: Some(p.to_path_buf()) };
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let bad_der = dir.path().join("bad.pem");
        std::fs::write(&bad_der, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        for (path, code, says) in [
            (&missing, exit::NOT_FOUND, "does not exist"),
            (&dir.path().to_path_buf(), exit::NOT_FOUND, "is not a file"),
            (&garbage, exit::CONFIG, "holds no certificate"),
            (&bad_der, exit::CONFIG, "cannot be a trust anchor"),
        ] {
            let e =
                Tls::new(&params(path), shown, None).err().unwrap_or_else(|| panic!("{}: accepted", path.display()));
            assert_eq!(e.exit_code(), code, "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()) && msg.contains(says), "{msg}");
        }
    }

    #[test]
    fn verify_without_a_root_file_uses_libpqs_default_or_says_what_to_do() {
        let home = tempfile::tempdir().unwrap();
        let params = Params { mode: Mode::VerifyCa, root_cert: None };
        let e = Tls::new(&params, "postgres://h/db", Some(home.path())).err().unwrap();
        assert_eq!(e.exit_code(), exit::NOT_FOUND);
        assert!(e.to_string().contains(".postgresql/root.crt does not exist"), "{e}");
        let e = Tls::new(&params, "postgres://h/db", None).err().unwrap();
        assert!(e.to_string().contains("no home directory"), "{e}");
        // The default file is read when it is there (and is judged like a named one).
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::write(home.path().join(".postgresql/root.crt"), "nothing\n").unwrap();
        let e = Tls::new(&params, "postgres://h/db", Some(home.path())).err().unwrap();
        assert_eq!(e.exit_code(), exit::CONFIG, "{e}");
        // require and prefer need no roots.
        for mode in [Mode::Require, Mode::Prefer] {
            let tls = Tls::new(&Params { mode, root_cert: None }, "postgres://h/db", Some(home.path())).unwrap();
            assert!(tls.connector().is_some() && tls.roots_from.is_none());
        }
        assert!(Tls::new(&Params { mode: Mode::Disable, root_cert: None }, "x", None).unwrap().connector().is_none());
    }
}
