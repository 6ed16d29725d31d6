//! The PostgreSQL backend: many daemons, on any number of hosts, share one queue.
//!
//! - [`schema`]: numbered, checksummed migrations under an advisory lock.
//! - [`workers`]: worker rows — incarnations, heartbeats on the server's clock, fencing.
//! - [`jobs`]: the queue's statements (claims with `FOR UPDATE SKIP LOCKED`).
//! - [`jobstore`]: [`jobstore::PgStore`], the engine's `JobStore` over them.
//! - [`ops`]: the operator commands' statements (`enqueue`, `list`, `cancel`, `status`, ...).
//!
//! Architecture invariant, as for `crate::sqlite`: no other module sends SQL to
//! PostgreSQL, and every write of a daemon starts with [`workers::guard`].
//!
//! Connection strings are secrets (they may carry a password): everything that shows or
//! logs one goes through [`redact`].
//!
//! [`Target::connect`] is the one place a connection is opened — the daemon's, every
//! operator command's, each reconnect — so every one of them gets the URL's TLS ([`tls`]:
//! libpq's `sslmode` and `sslrootcert`, checked and loaded once, in [`Target::parse`]).

pub mod daemon;
pub mod jobs;
pub mod jobstore;
pub mod ops;
pub mod schema;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod workers;

use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// Whether `database` names a PostgreSQL database (a `postgres://` or `postgresql://` URL).
pub fn is_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`, fit for logs, errors and `status`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    // userinfo ends at the last '@' before the path; a password may itself hold '@'.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{userinfo}@{host}"),
        },
        None => format!("{scheme}://{authority}"),
    };
    // A `password=` query parameter is a password too, and so is `sslpassword=` (a client
    // key's passphrase, which homerd refuses — in a message that shows the URL).
    let mut query_sep = '?';
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    out.push_str(path);
    for param in query.split('&').filter(|p| !p.is_empty()) {
        out.push(query_sep);
        query_sep = '&';
        match param.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword") => {
                out.push_str(&format!("{k}=***"))
            }
            _ => out.push_str(param),
        }
    }
    out
}

/// How a daemon or command connects: the parsed URL with homerd's timeouts and its TLS.
#[derive(Clone)]
pub struct Target {
    pub config: postgres::Config,
    /// The URL as shown to people: password replaced.
    pub shown: String,
    /// What `sslmode`/`sslrootcert` asked for, roots loaded.
    pub tls: tls::Tls,
    /// Each statement's and lock wait's bound, in ms.
    timeout_ms: u128,
    /// The URL's own `options` (e.g. `-c search_path=queue_a`), which homerd's settings
    /// are added to, never replace.
    user_options: Option<String>,
}

impl Target {
    /// Parses `url`; `timeout` bounds connecting, each statement and lock wait, and how long
    /// unacknowledged data may sit on a TCP connection (a partition is noticed within it).
    pub fn parse(url: &str, timeout: Duration) -> Result<Target> {
        let shown = redact(url);
        // The driver knows neither verify-* nor sslrootcert: they are taken out first.
        let (url, params) = tls::take_params(url, &shown)?;
        let mut config = postgres::Config::from_str(&url)
            .map_err(|e| Error::Usage(format!("{shown}: not a PostgreSQL connection URL: {e}")))?;
        let sockets = config.get_hosts().iter().filter(|h| !matches!(h, postgres::config::Host::Tcp(_))).count();
        let params = if sockets > 0 && sockets == config.get_hosts().len() {
            // As libpq: no TLS over a unix socket (the server offers none there), and no
            // certificate file read for it.
            tls::Params { mode: tls::Mode::Disable, root_cert: None }
        } else if sockets > 0 && params.mode != tls::Mode::Disable {
            return Err(Error::Usage(format!(
                "{shown}: sslmode={} applies to every host, and this URL mixes unix sockets (where the \
                 server offers no TLS) with TCP hosts; list only TCP hosts, or only sockets",
                params.mode.name()
            )));
        } else {
            params
        };
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(std::path::PathBuf::from);
        let tls = tls::Tls::new(&params, &shown, home.as_deref())?;
        config.ssl_mode(tls.mode.driver());
        if config.get_user().is_none() {
            // As libpq does: the operating system user's name (whoami is built as a
            // stub, see daemon/Cargo.toml).
            config.user(&std::env::var("USER").unwrap_or_else(|_| String::from("postgres")));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let ms = timeout.as_millis().max(1);
        config
            .application_name("homerd")
            .tcp_user_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(1))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        let user_options = config.get_options().map(str::to_owned);
        let mut target = Target { config, shown, tls, timeout_ms: ms, user_options };
        target.limit_idle_transactions(timeout * 4);
        Ok(target)
    }

    /// The server ends a session left idle inside a transaction after `limit` (releasing
    /// its locks). A daemon sets it to half its stale threshold: a daemon frozen in the
    /// middle of a write (SIGSTOP, a paused VM) holds the share lock on its own worker row,
    /// which would otherwise keep every other worker from fencing it for as long as it
    /// stays frozen.
    pub fn limit_idle_transactions(&mut self, limit: Duration) {
        let ms = self.timeout_ms;
        // The server's settings are 32-bit counts of milliseconds.
        let idle = limit.as_millis().clamp(1, i32::MAX as u128);
        let ours =
            format!("-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={idle}");
        self.config.options(&match &self.user_options {
            Some(theirs) => format!("{theirs} {ours}"),
            None => ours,
        });
    }

    /// Opens a connection, with TLS when the URL asks for it. Every connection homerd
    /// opens is opened here.
    pub fn connect(&self) -> Result<Client> {
        let result = match self.tls.connector() {
            Some(connector) => self.config.connect(connector),
            None => self.config.connect(NoTls),
        };
        result.map_err(|e| {
            tls::explain(&self.shown, &self.tls, &e).unwrap_or_else(|| Error::postgres_in(&self.shown, "connect", e))
        })
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn redact_hides_every_password() {
        let cases = [
            ("postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgresql://u:p@ss@h/db?sslmode=disable", "postgresql://u:***@h/db?sslmode=disable"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db?user=u&password=secret&x=1", "postgres://h/db?user=u&password=***&x=1"),
            ("postgres://h", "postgres://h"),
            ("postgres://h/db?sslkey=/k&sslpassword=secret", "postgres://h/db?sslkey=/k&sslpassword=***"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
            assert!(!redact(url).contains("secret"));
        }
    }

    #[test]
    fn every_sslmode_parses_and_sets_the_drivers_mode() {
        use postgres::config::SslMode;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.crt");
        let ca = rcgen::generate_simple_self_signed(vec![String::from("ca.test")]).unwrap();
        std::fs::write(&root, ca.cert.pem()).unwrap();
        let root = root.display().to_string();
        for (query, want) in [
            (String::new(), SslMode::Disable),
            (String::from("?sslmode=disable"), SslMode::Disable),
            (String::from("?sslmode=prefer"), SslMode::Prefer),
            (String::from("?sslmode=require"), SslMode::Require),
            (format!("?sslmode=verify-ca&sslrootcert={root}"), SslMode::Require),
            (format!("?sslmode=verify-full&sslrootcert={root}"), SslMode::Require),
        ] {
            let t = Target::parse(&format!("postgres://u:secret@h/db{query}"), Duration::from_secs(1)).unwrap();
            assert_eq!(t.config.get_ssl_mode(), want, "{query}");
            assert!(!t.shown.contains("secret"));
        }
        // Over a unix socket: no TLS, whatever the mode, and no root file read (as libpq).
        let t = Target::parse("postgres://u@/db?host=/run/pg&sslmode=require", Duration::from_secs(1)).unwrap();
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        let url = "postgres://u@/db?host=/run/pg&sslmode=verify-full&sslrootcert=/nonexistent/root.crt";
        assert_eq!(Target::parse(url, Duration::from_secs(1)).unwrap().config.get_ssl_mode(), SslMode::Disable);
        let e = Target::parse("postgres://u:secret@h,%2Frun%2Fpg/db?sslmode=require", Duration::from_secs(1))
            .err()
            .unwrap();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        assert!(e.to_string().contains("mixes unix sockets") && !e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn the_urls_own_options_are_kept_beside_homerds() {
        let url = "postgres://u@h/db?options=-c%20search_path%3Dqueue_a";
        let mut t = Target::parse(url, Duration::from_secs(2)).unwrap();
        t.limit_idle_transactions(Duration::from_secs(7));
        let options = t.config.get_options().unwrap();
        assert!(options.starts_with("-c search_path=queue_a "), "{options}");
        assert!(
            options.contains("statement_timeout=2000") && options.ends_with("idle_in_transaction_session_timeout=7000")
        );
        // Set once more (as `run` does): still one copy of each.
        t.limit_idle_transactions(Duration::from_secs(9));
        assert_eq!(t.config.get_options().unwrap().matches("statement_timeout").count(), 1);
        assert_eq!(t.config.get_options().unwrap().matches("search_path").count(), 1);
    }

    #[test]
    fn a_bad_url_is_a_usage_error_without_the_password() {
        let e = Target::parse("postgres://u:secret@h:notaport/db", Duration::from_secs(1)).err().unwrap();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
