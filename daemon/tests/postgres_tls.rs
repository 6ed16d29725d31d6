//! TLS to PostgreSQL against real servers with `ssl = on` (`homer_testkit::PgTls`), their
//! certificates made here with rcgen: a CA, and server certificates it signs for
//! 127.0.0.1 (or for another name only). What each `sslmode` does, end to end:
//! `verify-full` with the right root runs a job through a real `homerd run`; a wrong
//! root or a wrong host name is refused (78) and writes nothing; `verify-ca` accepts the
//! wrong name; `require` and `prefer` are encrypted (`pg_stat_ssl`); `disable` (and no
//! `sslmode`) against a `hostssl`-only server is refused (77) saying TLS is needed;
//! `require` against a server without TLS is refused (78); a bad `sslrootcert` is 66, 77
//! (as uid 65534) or 78, naming the file. The password of the URL is never shown.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect the database directly

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{deadline, Output, Sandbox};
use homer_testkit::{PgOptions, PgServer, PgTls};
use homerd::postgres::Target;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A server certificate for `names` (host names or IP addresses) and its key, PEM.
    fn server(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A sandbox with a server whose certificate the CA signed for `names`; `tls_only`:
/// TCP clients only over TLS. The CA's certificate is `ca.pem` in the sandbox.
struct Tls {
    sb: Sandbox,
    server: PgServer,
    ca_file: PathBuf,
}

impl Tls {
    fn start(ca: &Ca, names: &[&str], tls_only: bool) -> Tls {
        let sb = Sandbox::new();
        let (cert_pem, key_pem) = ca.server(names);
        let opts = PgOptions { tls: Some(PgTls { cert_pem, key_pem, tls_only }), ..PgOptions::default() };
        let server =
            PgServer::start_with(sb.dir.path(), &opts).unwrap_or_else(|e| panic!("PostgreSQL for the test: {e}"));
        let ca_file = sb.dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        Tls { sb, server, ca_file }
    }

    /// The server's URL over TCP at 127.0.0.1, with a password (never to be shown) and `query`.
    fn url(&self, query: &str) -> String {
        let url = self.server.url().replacen("postgres://homer@", "postgres://homer:sekret@", 1);
        if query.is_empty() {
            url
        } else {
            format!("{url}?{query}")
        }
    }

    fn verify_full(&self) -> String {
        self.url(&format!("sslmode=verify-full&sslrootcert={}", self.ca_file.display()))
    }

    /// `homerd --database URL ARGS`.
    fn run(&self, url: &str, args: &[&str]) -> Output {
        let mut all = vec!["--database", url];
        all.extend_from_slice(args);
        let out = self.sb.run(&all);
        assert!(!out.stderr.contains("sekret") && !out.stdout.contains("sekret"), "{args:?}: {}", out.stderr);
        out
    }

    fn ok(&self, url: &str, args: &[&str]) -> String {
        let out = self.run(url, args);
        assert_eq!(out.code, Some(0), "homerd {args:?}: {}{}", out.stdout, out.stderr);
        out.stdout
    }

    /// `SELECT count(*) FROM job_queue` over the socket (no TLS there).
    fn jobs(&self) -> String {
        self.server.psql("SELECT count(*) FROM job_queue").unwrap().trim().to_owned()
    }
}

/// Whether a session opened by homerd's own connector with `url` is encrypted, as the
/// server sees it.
fn session_ssl(url: &str) -> Result<bool, String> {
    let target = Target::parse(url, Duration::from_secs(20)).map_err(|e| e.to_string())?;
    let mut client = target.connect().map_err(|e| e.to_string())?;
    let row =
        client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[test]
fn verify_full_with_the_right_root_runs_a_job_end_to_end_over_tls() {
    let ca = Ca::new("homer test CA");
    // TCP clients only over TLS: every command below could only have got in encrypted.
    let t = Tls::start(&ca, &["127.0.0.1", "localhost"], true);
    let url = t.verify_full();
    t.ok(&url, &["migrate"]);
    let mut c = t.sb.cmd();
    c.args(["--database", &url, "run"]);
    let mut d = common::Daemon::spawn(c);
    d.wait_event("daemon.active");

    let id: i64 =
        t.ok(&url, &["enqueue", "exec", "--", "sh", "-c", "echo over tls $HOMER_JOB_ID"]).trim().parse().unwrap();
    let out = t.run(&url, &["wait", &id.to_string(), "--timeout", "60s"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(t.ok(&url, &["logs", &id.to_string()]), format!("over tls {id}\n"));
    // The daemon's sessions (its store and its LISTEN connection) are encrypted.
    let sessions = t
        .server
        .psql(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'homerd'",
        )
        .unwrap();
    let (encrypted, plain) = sessions.trim().split_once('|').unwrap();
    assert!(encrypted.parse::<u32>().unwrap() >= 2 && plain == "0", "encrypted|plain: {sessions}");
    let status: serde_json::Value = serde_json::from_str(&t.ok(&url, &["status", "--json"])).unwrap();
    assert_eq!(status["daemon"]["state"], "active", "{status}");
    d.stop_cleanly();
}

#[test]
fn verify_full_without_sslrootcert_reads_libpqs_default_root_file() {
    let ca = Ca::new("homer test CA");
    let t = Tls::start(&ca, &["127.0.0.1"], true);
    let url = t.url("sslmode=verify-full");
    // HOME is the sandbox (homer_testkit::homerd_command): no ~/.postgresql/root.crt yet.
    let out = t.run(&url, &["migrate"]);
    assert_eq!(out.code, Some(66), "{}", out.stderr);
    assert!(
        out.stderr.contains(".postgresql/root.crt does not exist") && out.stderr.contains("sslrootcert"),
        "{}",
        out.stderr
    );
    std::fs::create_dir(t.sb.dir.path().join(".postgresql")).unwrap();
    std::fs::copy(&t.ca_file, t.sb.dir.path().join(".postgresql/root.crt")).unwrap();
    t.ok(&url, &["migrate"]);
}

#[test]
fn a_wrong_root_or_a_wrong_host_name_is_refused_and_nothing_is_written() {
    let ca = Ca::new("homer test CA");
    let t = Tls::start(&ca, &["127.0.0.1"], false);
    t.ok(&t.verify_full(), &["migrate"]);

    // A root that did not sign the server's certificate.
    let other = t.sb.dir.path().join("other-ca.pem");
    std::fs::write(&other, Ca::new("another CA").pem).unwrap();
    let wrong_root = t.url(&format!("sslmode=verify-full&sslrootcert={}", other.display()));
    for args in [&["enqueue", "noop"][..], &["list"], &["status", "--json"]] {
        let out = t.run(&wrong_root, args);
        assert_eq!(out.code, Some(78), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("not signed by a root in") && out.stderr.contains(&other.display().to_string()),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("homer:***@127.0.0.1"), "{args:?} names the server: {}", out.stderr);
    }
    // The same under require and prefer: a named root is checked (libpq: require +
    // sslrootcert is verify-ca), and prefer does not fall back to plain.
    for mode in ["require", "prefer"] {
        let out = t.run(&t.url(&format!("sslmode={mode}&sslrootcert={}", other.display())), &["enqueue", "noop"]);
        assert_eq!(out.code, Some(78), "{mode}: {}", out.stderr);
        assert!(out.stderr.contains("not signed by a root in"), "{mode}: {}", out.stderr);
    }

    // The right root, but a host name the certificate does not list.
    let ca2 = Ca::new("homer test CA 2");
    let named = Tls::start(&ca2, &["db.homer.test"], false);
    named.ok(&named.url(""), &["migrate"]);
    let out = named.run(&named.verify_full(), &["enqueue", "noop"]);
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(
        out.stderr.contains("not for the host name") && out.stderr.contains("db.homer.test"),
        "names what the certificate is for: {}",
        out.stderr
    );
    // A daemon refused the same way exits 78 before registering anything.
    let mut c = named.sb.cmd();
    c.args(["--database", &named.verify_full(), "run"]);
    let out = common::run_bounded(c, deadline(60.0));
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(!out.stderr.contains("sekret"));
    assert_eq!(named.server.psql("SELECT count(*) FROM homer_workers").unwrap().trim(), "0");

    // verify-ca checks the chain and not the name: the same URL gets in.
    let verify_ca = named.url(&format!("sslmode=verify-ca&sslrootcert={}", named.ca_file.display()));
    assert_eq!(session_ssl(&verify_ca), Ok(true));
    assert_eq!((t.jobs(), named.jobs()), (String::from("0"), String::from("0")), "nothing was written");
}

#[test]
fn a_password_login_over_tls_is_bound_to_the_servers_certificate() {
    let ca = Ca::new("homer test CA");
    let mut t = Tls::start(&ca, &["127.0.0.1"], true);
    // A role that logs in with SCRAM (the server's default password_encryption), matched
    // ahead of the trust lines; the restart makes the server read the new rules.
    t.server.psql("CREATE ROLE pw LOGIN SUPERUSER PASSWORD 'sekret'").unwrap();
    let hba = t.server.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("hostssl all pw 127.0.0.1/32 scram-sha-256\n{rules}")).unwrap();
    t.server.restart(homer_testkit::StopMode::Fast).unwrap();
    let as_pw = |password: &str| {
        format!(
            "postgres://pw:{password}@127.0.0.1:{}/homer?sslmode=verify-full&sslrootcert={}&channel_binding=require",
            t.server.port(),
            t.ca_file.display()
        )
    };
    // channel_binding=require: the client refuses a login that is not SCRAM-SHA-256-PLUS,
    // bound to the certificate the TLS session saw.
    assert_eq!(session_ssl(&as_pw("sekret")), Ok(true));
    t.ok(&as_pw("sekret"), &["migrate"]);
    let out = t.run(&as_pw("wrong-sekret"), &["list"]);
    assert_eq!(out.code, Some(77), "{}", out.stderr);
    assert!(out.stderr.contains("pw:***@") && out.stderr.contains("password authentication failed"), "{}", out.stderr);
}

#[test]
fn require_and_prefer_are_encrypted_and_disable_is_not() {
    let ca = Ca::new("homer test CA");
    let t = Tls::start(&ca, &["127.0.0.1"], false);
    assert_eq!(session_ssl(&t.url("sslmode=require")), Ok(true), "require: no root needed");
    assert_eq!(session_ssl(&t.url("sslmode=prefer")), Ok(true), "prefer: TLS when offered");
    assert_eq!(session_ssl(&t.verify_full()), Ok(true));
    assert_eq!(session_ssl(&t.url("sslmode=disable")), Ok(false));
    assert_eq!(session_ssl(&t.url("")), Ok(false), "no sslmode is plain, as before TLS");
    // And the commands: a job enqueued under require.
    t.ok(&t.url("sslmode=require"), &["migrate"]);
    t.ok(&t.url("sslmode=require"), &["enqueue", "noop"]);
    assert_eq!(t.jobs(), "1");
}

#[test]
fn without_tls_a_hostssl_only_server_refuses_and_says_tls_is_needed() {
    let ca = Ca::new("homer test CA");
    let t = Tls::start(&ca, &["127.0.0.1"], true);
    t.ok(&t.verify_full(), &["migrate"]);
    for url in [t.url("sslmode=disable"), t.url("")] {
        let out = t.run(&url, &["enqueue", "noop"]);
        assert_eq!(out.code, Some(77), "{url}: {}", out.stderr);
        assert!(out.stderr.contains("no encryption") && out.stderr.contains("only over TLS"), "{url}: {}", out.stderr);
    }
    assert_eq!(t.jobs(), "0");
}

#[test]
fn require_against_a_server_without_tls_is_refused_and_prefer_connects_plain() {
    let sb = Sandbox::new();
    let server = PgServer::start(sb.dir.path()).unwrap_or_else(|e| panic!("PostgreSQL for the test: {e}"));
    let url = server.url().replacen("postgres://homer@", "postgres://homer:sekret@", 1);
    let out = sb.run(&["--database", &format!("{url}?sslmode=require"), "migrate"]);
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(out.stderr.contains("the server does not offer it") && !out.stderr.contains("sekret"), "{}", out.stderr);
    assert_eq!(server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'job_queue'").unwrap().trim(), "0");
    assert_eq!(session_ssl(&format!("{url}?sslmode=prefer")), Ok(false));
}

#[test]
fn a_bad_sslrootcert_is_refused_naming_the_file_before_connecting() {
    // No server at all: the file is judged when the URL is parsed.
    let sb = Sandbox::new();
    let base = "postgres://homer:sekret@127.0.0.1:1/homer?sslmode=verify-full&sslrootcert=";
    let missing = sb.dir.path().join("missing.pem");
    let garbage = sb.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (file, code, says) in [(&missing, 66, "does not exist"), (&garbage, 78, "holds no certificate")] {
        let url = format!("{base}{}", file.display());
        for args in [&["enqueue", "noop"][..], &["run"], &["status", "--json"]] {
            let mut all = vec!["--database", url.as_str()];
            all.extend_from_slice(args);
            let out = sb.run(&all);
            assert_eq!(out.code, Some(code), "{args:?}: {}", out.stderr);
            assert!(out.stderr.contains(&file.display().to_string()) && out.stderr.contains(says), "{}", out.stderr);
            assert!(!out.stderr.contains("sekret"), "{}", out.stderr);
        }
    }
    // Client certificates are refused as a usage error.
    let out = sb.run(&["--database", "postgres://homer:sekret@127.0.0.1:1/homer?sslcert=/c.pem", "list"]);
    assert_eq!(out.code, Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("`sslcert` is not supported") && !out.stderr.contains("sekret"), "{}", out.stderr);
}

#[test]
fn an_sslrootcert_this_user_cannot_read_is_77() {
    use std::os::unix::fs::PermissionsExt;
    let Some((sb, mut c)) = Sandbox::for_65534("to make a file another uid cannot read") else { return };
    // The sandbox is searchable by uid 65534, the file in it readable by root only.
    let root_only = sb.dir.path().join("root-only.pem");
    std::fs::write(&root_only, Ca::new("homer test CA").pem).unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url =
        format!("postgres://homer:sekret@127.0.0.1:1/homer?sslmode=verify-full&sslrootcert={}", root_only.display());
    c.args(["--database", &url, "list"]);
    let out = common::run_bounded(c, deadline(30.0));
    assert_eq!(out.code, Some(77), "{}", out.stderr);
    assert!(
        out.stderr.contains(&root_only.display().to_string()) && out.stderr.contains("cannot be read"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("sekret"));
}
