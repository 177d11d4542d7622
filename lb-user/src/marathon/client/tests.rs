//! Unit tests of the client's pure parts: credentials, redaction, URLs, redirects, CA files.
use std::path::PathBuf;

use super::{
    auth::{base64, percent_decode},
    *,
};

fn url(s: &str) -> Url {
    s.parse().expect("test URL parses")
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, want) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), want, "base64 of {input:?}");
    }
}

#[test]
fn basic_auth_parses_user_and_password_with_colons() {
    let auth = Auth::basic("alice:pa:ss").expect("user:pass parses");
    assert_eq!(
        auth,
        Auth::Basic {
            user: Secret::new("alice"),
            password: Secret::new("pa:ss")
        }
    );
    assert!(
        Auth::basic("no-colon").is_err(),
        "a value without ':' is rejected"
    );
    assert!(Auth::basic(":pass").is_err(), "an empty user is rejected");
    let header = auth.header().expect("basic auth gives a header");
    assert_eq!(
        header.to_str().expect("ascii"),
        format!("Basic {}", base64(b"alice:pa:ss"))
    );
    assert!(header.is_sensitive(), "the header is marked sensitive");
}

#[test]
fn token_auth_uses_dcos_header_form() {
    let header = Auth::token("abc.def")
        .header()
        .expect("token gives a header");
    assert_eq!(header.to_str().expect("ascii"), "token=abc.def");
}

#[test]
fn credential_files_read_first_line_only() {
    let dir = std::env::temp_dir().join(format!("lb-client-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join("cred");
    std::fs::write(&path, "bob:s3cret\r\nignored:line\n").expect("write cred file");
    let auth = Auth::basic_from_file(&path).expect("credential file parses");
    assert_eq!(
        auth,
        Auth::Basic {
            user: Secret::new("bob"),
            password: Secret::new("s3cret")
        }
    );
    std::fs::write(&path, "tok-123\n").expect("write token file");
    assert_eq!(
        Auth::token_from_file(&path).expect("token file parses"),
        Auth::token("tok-123")
    );
    std::fs::write(&path, "nocolon\n").expect("write bad cred file");
    let err = Auth::basic_from_file(&path).expect_err("a line without ':' is rejected");
    assert!(
        !err.to_string().contains("nocolon"),
        "the error does not echo the file content: {err}"
    );
    let missing =
        Auth::basic_from_file(&dir.join("missing")).expect_err("a missing file is an error");
    assert!(
        missing.to_string().contains("missing"),
        "the error names the file: {missing}"
    );
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let cfg = ClientConfig {
        urls: vec![url("http://alice:hunter2@marathon.example:8080")],
        auth: Auth::None,
        ..ClientConfig::default()
    };
    let debug = format!("{cfg:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("alice"),
        "config Debug leaks: {debug}"
    );
    let client = MarathonClient::new(&cfg).expect("client builds");
    let client_debug = format!("{client:?}");
    assert!(
        !client_debug.contains("hunter2") && !client_debug.contains("alice"),
        "client Debug leaks: {client_debug}"
    );
    assert_eq!(
        client.auth,
        Auth::Basic {
            user: Secret::new("alice"),
            password: Secret::new("hunter2")
        }
    );
    assert!(
        client
            .urls()
            .iter()
            .all(|u| u.username().is_empty() && u.password().is_none()),
        "kept URLs carry no user-info"
    );

    for auth in [
        Auth::basic("alice:hunter2").expect("parses"),
        Auth::token("hunter2"),
    ] {
        let d = format!("{auth:?}");
        assert!(
            !d.contains("hunter2") && !d.contains("alice"),
            "Auth Debug leaks: {d}"
        );
    }
    assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    assert_eq!(
        redact_url(&url("https://alice:hunter2@m.example/marathon")),
        "https://m.example/marathon"
    );

    let bad = ClientConfig {
        urls: vec![url("ftp://alice:hunter2@m.example")],
        ..ClientConfig::default()
    };
    let err = MarathonClient::new(&bad).expect_err("ftp is rejected");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("alice"),
        "error leaks: {text}"
    );

    let conflict = ClientConfig {
        urls: vec![url("http://alice:hunter2@m.example")],
        auth: Auth::token("t"),
        ..ClientConfig::default()
    };
    let err = MarathonClient::new(&conflict).expect_err("two kinds of auth are rejected");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("alice"),
        "error leaks: {text}"
    );
}

#[test]
fn attempt_errors_redact_and_say_what_was_tried() {
    let err = ClientError::AllFailed(vec![
        AttemptError {
            url: redact_url(&url("http://u:p@a:8080/v2/apps")),
            kind: AttemptErrorKind::Timeout,
        },
        AttemptError {
            url: redact_url(&url("http://b:8080/v2/apps")),
            kind: AttemptErrorKind::NoLeader(StatusCode::SERVICE_UNAVAILABLE),
        },
    ]);
    let text = err.to_string();
    assert_eq!(
        text,
        "every Marathon URL failed: GET http://a:8080/v2/apps: timed out; GET http://b:8080/v2/apps: 503 Service Unavailable (no Marathon leader, transient)"
    );
}

#[test]
fn base_urls_join_as_directories() {
    let cfg = ClientConfig {
        urls: vec![url("https://leader.mesos/marathon")],
        ..ClientConfig::default()
    };
    let client = MarathonClient::new(&cfg).expect("client builds");
    assert_eq!(
        client.urls()[0].join(APPS_PATH).expect("joins").as_str(),
        "https://leader.mesos/marathon/v2/apps?embed=apps.tasks"
    );
}

#[test]
fn redirects_resolve_and_never_downgrade() {
    let from = url("https://a:8443/v2/apps?embed=apps.tasks");
    let h = |s: &'static str| HeaderValue::from_static(s);
    assert_eq!(
        redirect_target(&from, Some(&h("https://b:8443/v2/apps?embed=apps.tasks")))
            .expect("absolute")
            .as_str(),
        "https://b:8443/v2/apps?embed=apps.tasks"
    );
    assert_eq!(
        redirect_target(&from, Some(&h("/v2/apps")))
            .expect("relative")
            .as_str(),
        "https://a:8443/v2/apps"
    );
    assert!(
        redirect_target(&from, Some(&h("http://b:8080/v2/apps"))).is_err(),
        "https -> http is refused"
    );
    assert!(
        redirect_target(&from, None).is_err(),
        "no Location is an error"
    );
    let with_userinfo = redirect_target(&url("http://a/"), Some(&h("http://x:y@b/")))
        .expect("userinfo is stripped");
    assert_eq!(with_userinfo.as_str(), "http://b/");
}

#[test]
fn percent_decoding_of_url_credentials() {
    assert_eq!(percent_decode("p%40ss%3Aword"), "p@ss:word");
    assert_eq!(percent_decode("100%"), "100%");
    assert_eq!(percent_decode("%zz"), "%zz");
}

/// A throwaway self-signed certificate (no key kept anywhere); only its parsing matters.
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBczCCARmgAwIBAgIUbvo/FpXytYiW/qkBdtqotzUafekwCgYIKoZIzj0EAwIw\n\
DzENMAsGA1UEAwwEdGVzdDAeFw0yNjExMjExODUzMTFaFw0yNjExMjIxODUzMTFa\n\
MA8xDTALBgNVBAMMBHRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAReFxfH\n\
C98HVaX2pzOkhjNv9v0N3ZF8PdsOm/zZMNS3Fjz8g8xrUdisZyxdIVpxMA91gJfN\n\
Lit5PpFWtNgeMVTHo1MwUTAdBgNVHQ4EFgQUl8uQvThslCOAsAN3tQUJoDkRgUAw\n\
HwYDVR0jBBgwFoAUl8uQvThslCOAsAN3tQUJoDkRgUAwDwYDVR0TAQH/BAUwAwEB\n\
/zAKBggqhkjOPQQDAgNIADBFAiEAxX6Z8b0UnZl1Ns8NSiS9yxCAR11WiCMBFzFL\n\
SGk4B+QCIF2n7CqGttm8pmj4ftqxMThyfaAyq5LE8xB6coxH4xQh\n\
-----END CERTIFICATE-----\n";

#[test]
fn ca_file_is_loaded_or_rejected_with_its_path() {
    let dir = std::env::temp_dir().join(format!("lb-client-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let cfg = |path: PathBuf| ClientConfig {
        urls: vec![url("https://m.example")],
        ca_cert: Some(path),
        ..ClientConfig::default()
    };
    let good = dir.join("ca.pem");
    std::fs::write(&good, TEST_CA).expect("write CA");
    MarathonClient::new(&cfg(good)).expect("a PEM certificate is accepted");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write garbage");
    let err = MarathonClient::new(&cfg(garbage)).expect_err("garbage is rejected");
    assert!(matches!(err, ClientError::CaPem { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    let err = MarathonClient::new(&cfg(dir.join("missing.pem"))).expect_err("missing file");
    assert!(
        matches!(err, ClientError::CaFile { .. }) && err.to_string().contains("missing.pem"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}

#[test]
fn app_paths_take_marathon_ids_only() {
    assert_eq!(
        app_path("/prod/web-1.v2").as_deref(),
        Some("v2/apps/prod/web-1.v2?embed=app.tasks")
    );
    for bad in [
        "", "/", "web", "/Web", "/a//b", "/a/../b", "/a?b", "/a b", "/a/", "/%2e",
    ] {
        assert_eq!(app_path(bad), None, "{bad:?}");
    }
}
