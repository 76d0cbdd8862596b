//! `--metrics-listen`: /metrics scraped while fio runs, checked by `promtool check metrics`
//! (Debian's prometheus package, scripts/setup.sh), its counters compared with
//! `bdev_get_iostat` and `pool_get_pools`.

mod common;

use common::{fio, free_port, qemu_io, require_tool, Server};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// GETs `path` from the metrics port; returns (status, content type, body).
fn get(port: u16, path: &str, accept: Option<&str>) -> (u16, String, String) {
    try_get(port, path, accept).expect("connect to the port")
}

/// [`get`], or the error of connecting (a server not listening yet).
fn try_get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-type:")
                .then(|| l[13..].trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// Scrapes until the server has gathered once (it answers 503 before), within a deadline.
fn scrape(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, content_type, body) = get(port, "/metrics", None);
        if status == 200 {
            assert!(
                content_type.starts_with("text/plain; version=0.0.4"),
                "{content_type}"
            );
            return body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "no metrics gathered in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check metrics` on `text`: (passed, what it said).
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// The value of the sample whose name and labels start `prefix` (`name{a="b",`…).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// The histogram `name` of the series with `labels`: its buckets as (le, cumulative count) in
/// the order exposed, checked to rise with le and to end at +Inf equal to `_count`; returns
/// the count.
fn histogram_count(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let bucket = format!("{name}_bucket{{");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|line| line.starts_with(&bucket))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|line| {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("an le label");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("a bound")
            };
            let value = line.rsplit_once(' ').expect("a value").1;
            (le, value.parse().expect("a count"))
        })
        .collect();
    assert!(buckets.len() >= 2, "{name} {labels:?}: buckets {buckets:?}");
    for pair in buckets.windows(2) {
        assert!(
            pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1,
            "{name} {labels:?}: not cumulative: {buckets:?}"
        );
    }
    let (last_le, last) = buckets[buckets.len() - 1];
    assert_eq!(last_le, f64::INFINITY, "{name} {labels:?}");
    let count = sample(text, &format!("{name}_count"), labels).expect("a _count");
    assert_eq!(last, count, "{name} {labels:?}: +Inf bucket and _count");
    assert!(
        sample(text, &format!("{name}_sum"), labels).is_some(),
        "{name} {labels:?}: _sum"
    );
    count
}

fn metrics_server() -> (Server, u16) {
    let port = free_port();
    let server = Server::start_with(|_| {
        vec![
            "--metrics-listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--cycle-ms".to_string(),
            "100".to_string(),
        ]
    });
    (server, port)
}

#[test]
fn metrics_scraped_during_fio_pass_promtool_and_agree_with_bdev_get_iostat() {
    require_tool("promtool");
    let (server, port) = metrics_server();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "vol", "pool": "p", "size": 32 * MIB}),
    );
    let url = server.url("vol");
    let dir = server.dir.path().to_path_buf();
    let load = std::thread::spawn(move || {
        fio(
            &dir,
            &[
                "--name=load".into(),
                "--ioengine=nbd".into(),
                format!("--uri={url}"),
                "--rw=randrw".into(),
                "--bs=4k".into(),
                "--iodepth=8".into(),
                "--size=16M".into(),
                "--time_based=1".into(),
                "--runtime=6".into(),
            ],
        )
    });
    // Scrape while fio runs: each answer passes promtool's checks.
    let mut during = 0;
    while !load.is_finished() {
        let text = scrape(port);
        let (passed, said) = promtool(&text);
        assert!(passed, "promtool check metrics: {said}\n{text}");
        during += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
    let (ok, output) = load.join().expect("fio thread");
    assert!(ok, "fio: {output}");
    assert!(during >= 2, "only {during} scrapes during the run");

    // After the run, the next gathers must show exactly what bdev_get_iostat counts.
    let iostat = server.ok("bdev_get_iostat", json!({"name": "vol"}));
    let bdev = &iostat["bdevs"][0];
    let reads = bdev["num_read_ops"].as_u64().expect("reads");
    let writes = bdev["num_write_ops"].as_u64().expect("writes");
    let read_bytes = bdev["bytes_read"].as_u64().expect("bytes read");
    assert!(reads > 100 && writes > 100, "fio did little: {bdev}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(port);
        let seen = sample(
            &text,
            "sds_volume_ops_total",
            &[("volume", "vol"), ("op", "read")],
        );
        if seen == Some(reads as f64) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "sds_volume_ops_total read {seen:?}, bdev_get_iostat {reads}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (passed, said) = promtool(&text);
    assert!(passed, "promtool check metrics: {said}");
    let volume = [("volume", "vol"), ("pool", "p")];
    let with_op = |op| [("volume", "vol"), ("op", op)];
    assert_eq!(
        sample(&text, "sds_volume_ops_total", &with_op("write")),
        Some(writes as f64)
    );
    assert_eq!(
        sample(&text, "sds_volume_bytes_total", &with_op("read")),
        Some(read_bytes as f64)
    );
    assert_eq!(sample(&text, "sds_volume_errors_total", &volume), Some(0.0));
    assert_eq!(
        sample(&text, "sds_volume_size_bytes", &volume),
        Some((32 * MIB) as f64)
    );

    // The VP the I/O came through: the same operations, and a latency histogram with one
    // sample per operation, +Inf bucket equal to the count.
    let vp = [("volume", "vol"), ("host", common::TEST_HOST)];
    let vp_reads = sample(
        &text,
        "sds_vpath_ops_total",
        &[vp[0], vp[1], ("op", "read")],
    );
    let vp_writes = sample(
        &text,
        "sds_vpath_ops_total",
        &[vp[0], vp[1], ("op", "write")],
    );
    assert_eq!(vp_reads, Some(reads as f64));
    assert_eq!(vp_writes, Some(writes as f64));
    let count = sample(&text, "sds_vpath_latency_seconds_count", &vp).expect("histogram");
    let inf = sample(
        &text,
        "sds_vpath_latency_seconds_bucket",
        &[vp[0], vp[1], ("le", "+Inf")],
    );
    assert_eq!(inf, Some(count));
    assert!(count >= (reads + writes) as f64, "{count} samples");
    // The volume's histogram is the sum of its VPs'.
    let vp_counts: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("sds_vpath_latency_seconds_count{") && l.contains("volume=\"vol\"")
        })
        .map(|l| {
            l.rsplit_once(' ')
                .expect("value")
                .1
                .parse::<f64>()
                .expect("count")
        })
        .sum();
    let volume_count = histogram_count(&text, "sds_volume_latency_seconds", &volume);
    assert_eq!(volume_count, vp_counts);
    assert!(
        volume_count >= (reads + writes) as f64,
        "{volume_count} samples"
    );
    let domain = sample(
        &text,
        "sds_domain_ops_total",
        &[("domain", "default"), ("op", "read")],
    );
    assert_eq!(domain, Some(reads as f64));

    // Pools: the same capacity as pool_get_pools; journal commits counted.
    let pools = server.ok("pool_get_pools", json!({}));
    let capacity = pools[0]["capacity"].as_u64().expect("capacity");
    assert_eq!(
        sample(&text, "sds_pool_capacity_bytes", &[("pool", "p")]),
        Some(capacity as f64)
    );
    let fill = sample(&text, "sds_pool_fill_ratio", &[("pool", "p")]).expect("fill");
    assert!(fill > 0.0 && fill <= 1.0, "fill {fill}");
    assert!(sample(&text, "sds_pool_journal_commits_total", &[("pool", "p")]).unwrap_or(0.0) > 0.0);
    assert!(sample(
        &text,
        "sds_lun_size_bytes",
        &[("lun", "p-a"), ("pool", "p")]
    )
    .is_some());
    // The pool's two LUNs (p-a, p-b): every 4 KiB write was one LUN write on one of them (new
    // extents are zeroed by the provisioning thread, not counted here); reads of
    // never-written ranges need no LUN I/O. bdev_get_iostat on each LUN and /metrics agree.
    let (mut lun_writes, mut lun_reads, mut lun_written) = (0, 0, 0);
    for name in ["p-a", "p-b"] {
        let iostat = server.ok("bdev_get_iostat", json!({"name": name}));
        let lun = &iostat["bdevs"][0];
        let writes = lun["num_write_ops"].as_u64().expect("LUN writes");
        let reads = lun["num_read_ops"].as_u64().expect("LUN reads");
        let written = lun["bytes_written"].as_u64().expect("LUN bytes written");
        assert_eq!(lun["bytes_read"].as_u64(), Some(reads * 4096), "{lun}");
        assert_eq!(written, writes * 4096, "{lun}");
        let labels = |op| [("lun", name), ("pool", "p"), ("op", op)];
        assert_eq!(
            sample(&text, "sds_lun_ops_total", &labels("write")),
            Some(writes as f64),
            "{name}"
        );
        assert_eq!(
            sample(&text, "sds_lun_ops_total", &labels("read")),
            Some(reads as f64),
            "{name}"
        );
        assert_eq!(
            sample(&text, "sds_lun_bytes_total", &labels("write")),
            Some(written as f64),
            "{name}"
        );
        // Each class's latency histogram: one sample per LUN I/O, cumulative buckets.
        for op in ["read", "write", "flush"] {
            let ops = sample(&text, "sds_lun_ops_total", &labels(op)).expect("LUN ops");
            let count = histogram_count(&text, "sds_lun_latency_seconds", &labels(op));
            assert_eq!(count, ops, "{name} {op}");
        }
        if writes > 0 {
            let seconds = sample(&text, "sds_lun_latency_seconds_sum", &labels("write"))
                .expect("LUN write time");
            assert!(seconds > 0.0, "{name}: {seconds}");
        }
        lun_writes += writes;
        lun_reads += reads;
        lun_written += written;
    }
    assert_eq!(lun_writes, writes);
    assert_eq!(Some(lun_written), bdev["bytes_written"].as_u64());
    assert!(
        lun_reads > 0 && lun_reads <= reads,
        "{lun_reads} of {reads}"
    );
    // fio came over NBD: no iSCSI session, no NVMe/TCP controller.
    assert_eq!(sample(&text, "sds_iscsi_sessions", &[]), Some(0.0));
    assert_eq!(sample(&text, "sds_nvmf_controllers", &[]), Some(0.0));
    let busy = sample(&text, "sds_reactor_busy_ratio", &[("reactor", "0")]).expect("reactor");
    assert!((0.0..=1.0).contains(&busy), "busy ratio {busy}");
    assert!(text.contains(&format!(
        "sds_build_info{{version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    )));

    // A mirror: its state and its legs' as state sets, once it has synced.
    server.file_pool("q", MIB);
    server.ok(
        "volume_create",
        json!({"name": "m1", "pool": "p", "size": 4 * MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "m2", "pool": "q", "size": 4 * MIB}),
    );
    server.ok(
        "mirror_create",
        json!({"name": "mir", "legs": ["m1", "m2"]}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape(port);
        let healthy = sample(
            &text,
            "sds_mirror_state",
            &[("mirror", "mir"), ("state", "healthy")],
        );
        if healthy == Some(1.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror never showed healthy:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (passed, said) = promtool(&text);
    assert!(passed, "promtool check metrics: {said}");
    for leg in ["m1", "m2"] {
        let state = |s| sample(&text, "sds_mirror_leg_state", &[("leg", leg), ("state", s)]);
        assert_eq!(state("healthy"), Some(1.0), "{leg}");
        assert_eq!(state("failed"), Some(0.0), "{leg}");
    }
    assert_eq!(
        sample(
            &text,
            "sds_mirror_state",
            &[("mirror", "mir"), ("state", "degraded")]
        ),
        Some(0.0)
    );

    // A write to the mirror is one LUN write on each leg's pool, counted on those LUNs.
    let written = |pool: &str| -> u64 {
        ["a", "b"]
            .iter()
            .map(|suffix| {
                let iostat = server.ok(
                    "bdev_get_iostat",
                    json!({"name": format!("{pool}-{suffix}")}),
                );
                iostat["bdevs"][0]["bytes_written"].as_u64().expect("bytes")
            })
            .sum()
    };
    let before = (written("p"), written("q"));
    let (clean, said) = common::qemu_io(&server.url("mir"), &["write -P 0x6d 1M 1M".into()]);
    assert!(clean, "{said}");
    assert_eq!(written("p"), before.0 + MIB, "leg m1's pool");
    assert_eq!(written("q"), before.1 + MIB, "leg m2's pool");
}

#[test]
fn metrics_speak_openmetrics_when_asked_and_refuse_other_paths() {
    let (server, port) = metrics_server();
    scrape(port);
    let (status, content_type, body) = get(
        port,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    assert!(body.contains("# TYPE sds_reactor_busy_seconds counter"));
    let (status, _, _) = get(port, "/", None);
    assert_eq!(status, 404);

    // Every family the Grafana dashboard queries is one the server exports.
    let classic = scrape(port);
    let families: Vec<&str> = classic
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana-sds.json"),
    )
    .expect("contrib/grafana-sds.json");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("sds_") {
                    continue;
                }
                // A histogram's series: _bucket, _sum, _count of its family.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(word);
                assert!(
                    families.contains(&family),
                    "{word} (in {expr}) is not exported"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10, "the dashboard queries {queried} families");
    // The metrics thread ends with the server: SIGTERM still exits cleanly, and the port is
    // closed.
    let mut server = server;
    assert!(server.stop(), "{}", server.log());
    assert!(try_get(port, "/metrics", None).is_err());
}

/// The endpoint bounds what clients hold: more idle connections than it keeps open do not
/// lock a scraper out (the oldest are closed to make room), a connection that never sends is
/// closed after its timeout, and an oversized request is refused.
#[test]
fn metrics_endpoint_bounds_idle_connections_and_silent_clients() {
    let (_server, port) = metrics_server();
    scrape(port);
    // A silent client, then more idle connections than the server keeps
    // (METRICS_MAX_CONNECTIONS is 64).
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let started = Instant::now();
    let text = scrape(port);
    assert!(text.contains("sds_build_info"), "{text}");
    // The silent client is closed by the server (EOF or reset), well within the test's bound
    // (the server's timeout is METRICS_CONNECTION_TIMEOUT_MS = 5 s; it may also have been
    // evicted as the oldest).
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    match silent.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("the server sent data to a client that asked nothing"),
        Err(error) => assert!(
            error.kind() != std::io::ErrorKind::WouldBlock
                && error.kind() != std::io::ErrorKind::TimedOut,
            "the silent connection is still open after {:?}: {error}",
            started.elapsed()
        ),
    }
    // Every idle connection is closed by now too (evicted or timed out).
    for mut stream in idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let closed = matches!(stream.read(&mut byte), Ok(0) | Err(_));
        assert!(closed, "an idle connection got data");
    }
    // A request line and headers past the bound: 431, and the server still answers after.
    let mut big = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    big.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let header = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n",
        "a".repeat(16 * 1024)
    );
    // The server may close before reading it all: a failed write is fine.
    let _ = big.write_all(header.as_bytes());
    let mut response = Vec::new();
    let _ = big.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 431"),
        "{response}"
    );
    scrape(port);
}

/// A LUN of another array (an NBD export of a second sds): its links' state and numbers are
/// exported, and its I/O counted like a local LUN's.
#[test]
fn a_remote_lun_exports_its_links_and_io() {
    require_tool("promtool");
    let array = Server::start();
    array.file_pool("ap", MIB);
    array.ok(
        "volume_create",
        json!({"name": "exp", "pool": "ap", "size": 16 * MIB}),
    );
    let export = array.url("exp");
    let (server, port) = metrics_server();
    server.ok(
        "lun_create",
        json!({"name": "r", "kind": "nbd", "uri": export}),
    );
    server.ok(
        "pool_create",
        json!({"name": "rp", "luns": ["r"], "extent_size": MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "rv", "pool": "rp", "size": 8 * MIB}),
    );
    let url = server.url("rv");
    let (clean, text) = qemu_io(
        &url,
        &["write -P 0x3c 0 1M".into(), "read -P 0x3c 0 1M".into()],
    );
    assert!(clean, "{text}");
    let iostat = server.ok("bdev_get_iostat", json!({"name": "r"}));
    let lun = &iostat["bdevs"][0];
    let writes = lun["num_write_ops"].as_u64().expect("LUN writes");
    let reads = lun["num_read_ops"].as_u64().expect("LUN reads");
    assert!(writes > 0 && reads > 0, "{lun}");
    assert_eq!(lun["bytes_read"].as_u64(), Some(MIB), "{lun}");
    let labels = [("lun", "r"), ("kind", "nbd"), ("pool", "rp")];
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape(port);
        let connected = sample(
            &text,
            "sds_lun_remote_state",
            &[labels[0], ("state", "connected")],
        );
        let read = sample(&text, "sds_lun_ops_total", &[labels[0], ("op", "read")]);
        if connected == Some(1.0) && read == Some(reads as f64) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the remote LUN never showed connected with its reads:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (passed, said) = promtool(&text);
    assert!(passed, "promtool check metrics: {said}");
    let links = sample(&text, "sds_lun_remote_links", &labels).expect("links");
    assert!(links >= 1.0, "{links}");
    assert_eq!(
        sample(&text, "sds_lun_remote_links_connected", &labels),
        Some(links)
    );
    assert_eq!(
        sample(
            &text,
            "sds_lun_remote_state",
            &[labels[0], ("state", "failed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "sds_lun_remote_timeouts_total", &labels),
        Some(0.0)
    );
    assert!(sample(&text, "sds_lun_remote_reconnects_total", &labels).is_some());
    assert!(sample(&text, "sds_lun_remote_rtt_seconds", &labels).is_some_and(|rtt| rtt >= 0.0));
    assert_eq!(
        sample(&text, "sds_lun_bytes_total", &[labels[0], ("op", "write")]),
        lun["bytes_written"].as_u64().map(|b| b as f64)
    );
}

/// Percent-encodes a query-string value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prometheus's instant query API: the `data.result` list, or the error it answered.
fn prometheus_query(port: u16, query: &str) -> Result<Vec<serde_json::Value>, String> {
    let (status, _, body) = try_get(
        port,
        &format!("/api/v1/query?query={}", encode(query)),
        None,
    )
    .map_err(|e| format!("prometheus: {e}"))?;
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if answer["status"] != "success" {
        return Err(format!("{query}: {answer}"));
    }
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// A real Prometheus (Debian's, the package that brings promtool) scrapes the endpoint (it
/// asks for OpenMetrics), and every query of the Grafana dashboard parses and runs on it.
#[test]
fn prometheus_scrapes_the_server_and_the_dashboard_queries_run() {
    require_tool("prometheus");
    let (server, port) = metrics_server();
    server.ram_pool("p", 64 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "vol", "pool": "p", "size": 8 * MIB}),
    );
    common::write_and_verify(&server.url("vol"), &[(0x5a, 0, 65536)]);
    let web = free_port();
    let dir = server.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: sds\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let outcome = std::panic::catch_unwind(|| {
        // Prometheus has scraped when it knows the volume's read counter.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = prometheus_query(web, "sds_volume_ops_total{volume=\"vol\",op=\"read\"}");
            if let Ok(result) = &up {
                if let Some(value) = result.first().and_then(|r| r["value"][1].as_str()) {
                    assert!(value.parse::<f64>().unwrap_or(0.0) >= 1.0, "{result:?}");
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never scraped sds: {up:?}\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let up = prometheus_query(web, "up{job=\"sds\"}").expect("up");
        assert_eq!(up[0]["value"][1], "1", "{up:?}");
        let dashboard = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana-sds.json"),
        )
        .expect("dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("json");
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                // Grafana's variables, as Grafana would fill them in.
                let expr = target["expr"]
                    .as_str()
                    .expect("expr")
                    .replace("$__rate_interval", "10s")
                    .replace("$volume", ".*")
                    .replace("$domain", ".*");
                if let Err(error) = prometheus_query(web, &expr) {
                    panic!("the dashboard's query does not run: {error}");
                }
            }
        }
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
