//! marathon-lb's virtual hosts through the real daemon in the agent topology: the guide's
//! `curl -H "Host: mytask.acme.org" <agent>` round-robins over the tasks, unknown hosts get
//! HAProxy's 503, tasks see `X-Forwarded-*`, one keep-alive connection reaches two apps, TLS
//! picks its certificate by SNI, an Upgrade is joined byte for byte, and malformed or smuggling
//! requests are refused without disturbing the next client.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddrV4, TcpStream},
    process::Command,
    time::Duration,
};

use lb_tests::{
    lb::{self, NsStandin, wait_for},
    netns::{AGENT, CLIENT, TASKS, Topology, in_netns, server_bin},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);
const OTHER_PORT: u16 = 8080;

fn task(app: &str, i: usize, port: u16) -> Value {
    let (name, ip, _, _) = TASKS[i];
    json!({
        "id": format!("{app}.{name}"), "appId": format!("/{app}"), "state": "TASK_RUNNING",
        "host": AGENT.to_string(), "ports": [],
        "ipAddresses": [{"ipAddress": ip.to_string(), "protocol": "IPv4"}],
        "servicePorts": [port]
    })
}

/// The guide's nginx app on t1..t3 (`mytask.acme.org`) and a second app, `other`, on t1:8080.
fn apps(nginx_tasks: &[usize], other_labels: Value) -> Value {
    let mut other = json!({"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": "other.acme.org"});
    for (k, v) in other_labels.as_object().unwrap() {
        other[k] = v.clone();
    }
    json!({"apps": [
        {
            "id": "/nginx", "instances": nginx_tasks.len(),
            "container": {"type": "DOCKER", "docker": {"image": "nginx:1.13"},
                          "portMappings": [{"containerPort": 80, "servicePort": 10000, "protocol": "tcp"}]},
            "networks": [{"name": "calico", "mode": "container"}],
            "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": "mytask.acme.org"},
            "tasks": nginx_tasks.iter().map(|&i| task("nginx", i, 10000)).collect::<Vec<_>>()
        },
        {
            "id": "/other", "instances": 1,
            "container": {"type": "DOCKER", "docker": {"image": "x"},
                          "portMappings": [{"containerPort": OTHER_PORT, "servicePort": 10001, "protocol": "tcp"}]},
            "networks": [{"name": "calico", "mode": "container"}],
            "labels": other,
            "tasks": [task("other", 0, 10001)]
        }
    ]})
}

/// `curl` from the client namespace; returns (status code, body, curl's stderr).
fn curl(topo: &Topology, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.ns("client"),
            "curl",
            "-sS",
            "-m",
            "5",
        ])
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn agent_url(path: &str) -> String {
    format!("http://{AGENT}{path}")
}

/// One response read off a keep-alive connection: (status line, headers, body).
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(String, String, String), String> {
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| e.to_string())?;
    if status.is_empty() {
        return Err("connection closed".into());
    }
    let mut headers = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        headers.push_str(&line);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((
        status.trim().to_owned(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect_timeout(&SocketAddrV4::new(AGENT, port).into(), T).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

#[test]
fn vhosts_route_balance_forward_and_refuse_as_marathon_lb() {
    let mut topo = Topology::new("lbh1");
    topo.start_tasks();
    let mut other = topo.cmd("t1", &server_bin());
    other.arg("other").arg(OTHER_PORT.to_string());
    topo.spawn("other", other);
    let m = NsStandin::start(&topo.ns("agent"));
    m.standin.set_apps(apps(&[0, 1, 2], json!({})));
    let url = m.standin.url();
    let log = lb::start(
        &mut topo,
        "lb",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--marathon",
            &url,
            "--metrics",
            "127.0.0.1:9191",
        ],
        2,
    );
    wait_for("the front end answers on :80", T, || {
        curl(&topo, &["-H", "Host: mytask.acme.org", &agent_url("/")]).0 == 200
    });

    // The guide's command, answered by the three tasks in turn.
    let served: Vec<String> = (0..6)
        .map(|_| {
            let (code, body, err) = curl(&topo, &["-H", "Host: mytask.acme.org", &agent_url("/")]);
            assert_eq!(code, 200, "{body}{err}");
            body.split_whitespace().next().unwrap().to_owned()
        })
        .collect();
    let mut distinct = served.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, ["t1", "t2", "t3"], "{served:?}");
    assert_eq!(served[..3], served[3..], "round-robin: {served:?}");

    // Case and port in Host do not matter; the task sees marathon-lb's X-Forwarded-*.
    let (code, body, _) = curl(&topo, &["-H", "Host: MyTask.Acme.ORG:80", &agent_url("/")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!(" xff={CLIENT}")), "{body}");
    assert!(body.contains(" xfport=80"), "{body}");
    assert!(
        !body.contains("xfproto"),
        "plain HTTP adds no X-Forwarded-Proto: {body}"
    );

    // Unknown and missing hosts: HAProxy's 503.
    let (code, body, _) = curl(&topo, &["-H", "Host: nope.acme.org", &agent_url("/")]);
    assert_eq!(code, 503);
    assert!(
        body.contains("No server is available to handle this request."),
        "{body}"
    );
    let (code, _, _) = curl(&topo, &["-H", "Host:", &agent_url("/")]);
    assert_eq!(code, 503, "no Host");

    // One keep-alive connection, two vhosts: each request reaches its own app.
    let ask = |hosts: &'static [&'static str]| {
        in_netns(&topo.ns("client"), move || {
            let (mut s, mut r) = connect(80);
            let mut out = Vec::new();
            for host in hosts {
                write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
                let (status, _, body) =
                    read_response(&mut r).expect("response on the same connection");
                assert!(status.contains("200"), "{status}");
                out.push(body);
            }
            out
        })
    };
    let answers = ask(&["other.acme.org", "mytask.acme.org", "other.acme.org"]);
    let name = |body: &String| body.split_whitespace().next().unwrap().to_owned();
    let peer = |body: &String| {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix("peer="))
            .unwrap()
            .to_owned()
    };
    assert_eq!(name(&answers[0]), "other");
    assert!(name(&answers[1]).starts_with('t'), "{answers:?}");
    assert_eq!(name(&answers[2]), "other");
    // The task's connection was idle in the pool between the two: the second request to
    // `other` came over it (same front-end port at the task); once idle past IDLE_FOR, a new
    // connection is opened.
    assert_eq!(peer(&answers[0]), peer(&answers[2]), "{answers:?}");
    std::thread::sleep(lb_user::http::pool::IDLE_FOR + Duration::from_millis(500));
    let later = ask(&["other.acme.org"]);
    assert_ne!(peer(&later[0]), peer(&answers[2]), "{later:?}");
    // /metrics counts the answers by code (the 503s above) and the reused task connections.
    let metrics = lb::agent_http(&topo, 9191, "/metrics").expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    let count = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert!(count(r#"lb_http_responses_total{code="503"}"#) >= 2);
    assert!(count(r#"lb_http_responses_total{code="200"}"#) >= 9);
    assert!(count(r#"lb_http_task_connections_total{connection="reused"}"#) >= 1);
    assert!(count(r#"lb_http_task_connections_total{connection="new"}"#) >= 3);

    // Expect: 100-continue and a chunked body go through.
    let (code, body, err) = curl(
        &topo,
        &[
            "-H",
            "Host: mytask.acme.org",
            "-H",
            "Expect: 100-continue",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "hello",
            &agent_url("/"),
        ],
    );
    assert_eq!(code, 200, "{body}{err}");

    // TLS with the generated certificate, chosen for any SNI; X-Forwarded-Proto says https.
    let resolve = format!("mytask.acme.org:443:{AGENT}");
    let (code, body, err) = curl(
        &topo,
        &["-vk", "--resolve", &resolve, "https://mytask.acme.org/"],
    );
    assert_eq!(code, 200, "{body}{err}");
    assert!(
        body.contains(" xfport=443") && body.contains(" xfproto=https"),
        "{body}"
    );
    assert!(
        err.contains("rcgen self signed cert"),
        "the generated certificate: {err}"
    );

    // An app brings its own certificate (HAPROXY_0_SSL_CERT): served for its SNI, verified.
    let dir = format!("/tmp/{}-certs", topo.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let pem = format!("{dir}/other.pem");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other.acme.org \
             -addext subjectAltName=DNS:other.acme.org -keyout {dir}/key.pem -out {dir}/cert.pem \
             2>/dev/null && cat {dir}/cert.pem {dir}/key.pem > {pem}"
        ))
        .status()
        .unwrap();
    assert!(made.success(), "openssl");
    m.standin
        .set_apps(apps(&[0, 1, 2], json!({"HAPROXY_0_SSL_CERT": pem})));
    let resolve_other = format!("other.acme.org:443:{AGENT}");
    let cacert = format!("{dir}/cert.pem");
    wait_for("the app's certificate is served", T, || {
        curl(
            &topo,
            &[
                "--cacert",
                &cacert,
                "--resolve",
                &resolve_other,
                "https://other.acme.org/",
            ],
        )
        .0 == 200
    });
    let (_, body, _) = curl(
        &topo,
        &[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve_other,
            "https://other.acme.org/",
        ],
    );
    assert!(body.starts_with("other "), "{body}");

    // Malformed and smuggling requests: refused, and the next client is served as before.
    let refused = in_netns(&topo.ns("client"), || {
        let mut out = Vec::new();
        for raw in [
            "GET / HTTP/1.1\r\nHost: mytask.acme.org\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: mytask.acme.org\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "GET / HTTP/1.1\r\nHost: a.acme.org\r\nHost: mytask.acme.org\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: mytask.acme.org\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: mytask.acme.org\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            let (mut s, mut r) = connect(80);
            s.write_all(raw.as_bytes()).unwrap();
            let status = read_response(&mut r).map(|r| r.0).unwrap_or_else(|e| e);
            out.push((raw, status));
        }
        out
    });
    for (raw, status) in refused {
        assert!(status.starts_with("HTTP/1.1 400"), "{raw:?} got {status:?}");
    }
    // Content-Length with Transfer-Encoding, in either order: refused with 400 before the body
    // is read (RFC 9112 §6.1 allows it; hyper alone would read it as chunked), and what hides
    // behind either framing is never read as a request.
    for raw in [
        "POST / HTTP/1.1\r\nHost: mytask.acme.org\r\nContent-Length: 40\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: other.acme.org\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: mytask.acme.org\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: 5\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: other.acme.org\r\n\r\n",
    ] {
        let smuggled = in_netns(&topo.ns("client"), move || {
            let (mut s, mut r) = connect(80);
            s.write_all(raw.as_bytes()).unwrap();
            let first = read_response(&mut r);
            let second = read_response(&mut r);
            (first, second)
        });
        let first = smuggled.0.expect("the POST is answered");
        assert!(first.0.starts_with("HTTP/1.1 400"), "{raw:?}: {first:?}");
        assert!(smuggled.1.is_err(), "nothing smuggled: {:?}", smuggled.1);
    }
    // A request after a pipelined one with a body on the same connection is still served.
    let pipelined = in_netns(&topo.ns("client"), || {
        let (mut s, mut r) = connect(80);
        s.write_all(
            b"POST / HTTP/1.1\r\nHost: mytask.acme.org\r\nContent-Length: 4\r\n\r\nabcd\
              GET / HTTP/1.1\r\nHost: other.acme.org\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        (read_response(&mut r), read_response(&mut r))
    });
    assert!(
        pipelined.0.as_ref().is_ok_and(|r| r.0.contains("200")),
        "{pipelined:?}"
    );
    let second = pipelined.1.expect("the second request is answered");
    assert!(
        second.0.contains("200") && second.2.starts_with("other"),
        "{second:?}"
    );
    let (code, body, _) = curl(&topo, &["-H", "Host: mytask.acme.org", &agent_url("/")]);
    assert_eq!(code, 200, "the next client is served: {body}");

    // WebSocket: the 101 joins both sides; bytes echo through, those sent with the request's
    // head first, then 4 MiB both ways at once, relayed in the kernel (splice).
    let echoed = in_netns(&topo.ns("client"), || {
        let (mut s, mut r) = connect(80);
        let msg = b"\x81\x05hello, byte for byte \x00\xff";
        let mut head = b"GET /chat HTTP/1.1\r\nHost: other.acme.org\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
        head.extend_from_slice(msg);
        s.write_all(&head).unwrap();
        let (status, headers, _) = read_response(&mut r).expect("101");
        assert!(status.contains("101"), "{status}\n{headers}");
        let mut back = vec![0u8; msg.len()];
        r.read_exact(&mut back).expect("echo");
        assert_eq!(back, msg, "the bytes sent with the head come back first");
        let bulk: Vec<u8> = (0..4 << 20).map(lb_tests::pattern).collect();
        let up = bulk.clone();
        let writer = std::thread::spawn(move || s.write_all(&up).map(|()| s));
        let mut back = vec![0u8; bulk.len()];
        r.read_exact(&mut back).expect("bulk echo");
        writer.join().unwrap().expect("bulk sent");
        back == bulk
    });
    assert!(echoed, "upgraded bytes come back unchanged");
    let metrics = lb::agent_http(&topo, 9191, "/metrics").expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("lb_http_tunnels_total{relay=\"splice\"} 1"),
        "{metrics}"
    );

    lb::assert_no_drops(&topo, &[]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("HTTP virtual hosts"), "{text}");
}

#[test]
fn redirects_scale_down_and_no_vhost() {
    let mut topo = Topology::new("lbh2");
    topo.start_tasks();
    let mut other = topo.cmd("t1", &server_bin());
    other.arg("other").arg(OTHER_PORT.to_string());
    topo.spawn("other", other);
    let m = NsStandin::start(&topo.ns("agent"));
    m.standin.set_apps(apps(
        &[0, 1, 2],
        json!({"HAPROXY_0_REDIRECT_TO_HTTPS": "true"}),
    ));
    let url = m.standin.url();
    lb::start(
        &mut topo,
        "lb",
        &["--iface", "eth*", "--iface", "cali*", "--marathon", &url],
        2,
    );
    wait_for("the front end answers on :80", T, || {
        curl(&topo, &["-H", "Host: mytask.acme.org", &agent_url("/")]).0 == 200
    });

    // REDIRECT_TO_HTTPS: 301 to the same host and URI over https; over TLS it is served.
    let (code, _, err) = curl(
        &topo,
        &[
            "-v",
            "-H",
            "Host: other.acme.org:80",
            &agent_url("/a/b?c=d"),
        ],
    );
    assert_eq!(code, 301, "{err}");
    assert!(
        err.contains("Location: https://other.acme.org/a/b?c=d")
            || err.contains("location: https://other.acme.org/a/b?c=d"),
        "{err}"
    );
    let resolve = format!("other.acme.org:443:{AGENT}");
    let (code, body, _) = curl(
        &topo,
        &["-k", "--resolve", &resolve, "https://other.acme.org/"],
    );
    assert_eq!((code, body.starts_with("other ")), (200, true), "{body}");

    // Scale-down: a long download from the task leaving the set completes; new requests
    // avoid that task within a second.
    let long = in_netns(&topo.ns("client"), || {
        // The cursor turns per request over t1, t2, t3: once t2 has answered, t3 is next.
        for _ in 0..3 {
            let (mut s, mut r) = connect(80);
            write!(s, "GET / HTTP/1.1\r\nHost: mytask.acme.org\r\n\r\n").unwrap();
            let (_, _, body) = read_response(&mut r).unwrap();
            if body.starts_with("t2 ") {
                break;
            }
        }
        let (mut s, r) = connect(80);
        write!(
            s,
            "GET /bytes/20000000 HTTP/1.1\r\nHost: mytask.acme.org\r\n\r\n"
        )
        .unwrap();
        (s, r)
    });
    let (_s, mut r) = long;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.contains("200"), "{head}");
    let mut first = vec![0u8; 100_000];
    r.read_exact(&mut first)
        .expect("start of the long download");
    let on_t3 = topo.sh("t3", "ss -Htn state established '( sport = :80 )'");
    assert!(!on_t3.trim().is_empty(), "the download is served by t3");
    m.standin.set_apps(apps(
        &[0, 1],
        json!({"HAPROXY_0_REDIRECT_TO_HTTPS": "true"}),
    ));
    wait_for("t3 leaves the vhost", Duration::from_secs(1), || {
        lb::active_backends(&topo, 10000).len() == 2
    });
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..6 {
        let (code, body, _) = curl(&topo, &["-H", "Host: mytask.acme.org", &agent_url("/")]);
        assert_eq!(code, 200);
        assert!(!body.starts_with("t3 "), "new requests avoid t3: {body}");
    }
    // The client connection stays open (keep-alive): read exactly the announced length.
    let mut rest = vec![0u8; 20_000_000 - 100_000];
    r.read_exact(&mut rest).expect("the download completes");
    let all: Vec<u8> = first.into_iter().chain(rest).collect();
    assert_eq!(all.len(), 20_000_000, "no byte lost");
    assert!(
        all.iter()
            .enumerate()
            .step_by(997)
            .all(|(i, b)| *b == lb_tests::pattern(i)),
        "the bytes are the task's"
    );
    assert!(topo.stop("lb").success());

    // --no-vhost: nothing listens on :80 (the port stays balanced at L4).
    lb::start(
        &mut topo,
        "lb2",
        &[
            "--iface",
            "eth*",
            "--iface",
            "cali*",
            "--marathon",
            &url,
            "--no-vhost",
        ],
        2,
    );
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, _) = curl(&topo, &["-H", "Host: mytask.acme.org", &agent_url("/")]);
    assert_eq!(code, 0, "refused");
    let (code, _, _) = curl(&topo, &[&format!("http://{AGENT}:10000/")]);
    assert_eq!(code, 200, "L4 still serves the service port");
}

/// marathon-lb applies `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL` to HTTP backends too
/// (`http-request deny`): a virtual host answers 403 to clients outside the ranges.
#[test]
fn an_allowed_networks_label_guards_the_virtual_host_too() {
    let mut topo = Topology::new("lbh4");
    topo.start_tasks();
    topo.sh("client", "ip addr add 10.0.0.3/24 dev eth0");
    let mut other = topo.cmd("t1", &server_bin());
    other.arg("other").arg(OTHER_PORT.to_string());
    topo.spawn("other", other);
    let m = NsStandin::start(&topo.ns("agent"));
    m.standin.set_apps(apps(
        &[0],
        json!({"HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.0.0.3"}),
    ));
    let url = m.standin.url();
    lb::start(
        &mut topo,
        "lb",
        &["--iface", "eth*", "--iface", "cali*", "--marathon", &url],
        2,
    );
    wait_for("the front end answers on :80", T, || {
        curl(&topo, &["-H", "Host: mytask.acme.org", &agent_url("/")]).0 == 200
    });
    let (code, body, _) = curl(&topo, &["-H", "Host: other.acme.org", &agent_url("/")]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("Request forbidden by administrative rules."),
        "{body}"
    );
    let (code, body, _) = curl(
        &topo,
        &[
            "--interface",
            "10.0.0.3",
            "-H",
            "Host: other.acme.org",
            &agent_url("/"),
        ],
    );
    assert_eq!((code, body.starts_with("other ")), (200, true), "{body}");
}
