//! The simulated hosts themselves: each is a real Docker engine isolated like a separate
//! machine, and stopping it leaves nothing behind on this machine.

use std::fs;
use std::process::Command;

use dropship_tests::http::{free_port, FileServer, Reply};
use dropship_tests::simhost::{SimHost, IMAGE};

/// A compose project with one busybox httpd publishing `127.0.0.1:8080` and a healthcheck.
fn web_compose(body: &str) -> String {
    format!(
        "services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [\"sh\", \"-c\", \"mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8000 -h /www\"]\n    ports:\n      - \"127.0.0.1:8080:8000\"\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8000/\"]\n      interval: 1s\n      timeout: 2s\n      retries: 10\n"
    )
}

fn compose_up(host: &SimHost, project: &str, yaml: &str) {
    let dir = host.path("/opt/demo");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("compose.yaml"), yaml).unwrap();
    let out = host
        .command("docker")
        .args(["compose", "-p", project, "-f", "/opt/demo/compose.yaml"])
        .args(["up", "-d", "--wait", "--wait-timeout", "60"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compose up on {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What this machine's own network looks like: links, iptables rules, forwarding.
fn machine_network() -> String {
    let mut s = String::new();
    for args in [
        vec!["ip", "-o", "link", "show"],
        vec!["iptables", "-S"],
        vec!["iptables", "-t", "nat", "-S"],
        vec!["sysctl", "-n", "net.ipv4.ip_forward"],
    ] {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        s.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    // Link lines carry counters-free state only; drop the per-boot ifindex noise-free as is.
    s
}

#[test]
fn two_hosts_publish_the_same_port_each_on_its_own_loopback_and_leave_nothing_behind() {
    let before = machine_network();
    let mounts_before = fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .count();
    let mut hosts = SimHost::start_many(&["a", "b"]);
    let dockerd: Vec<u32> = hosts
        .iter()
        .map(|h| h.dockerd_pid().expect("dockerd runs"))
        .collect();
    compose_up(&hosts[0], "demo", &web_compose("from-a"));
    compose_up(&hosts[1], "demo", &web_compose("from-b"));

    // Same URL, different machines.
    let a = hosts[0]
        .http_get("http://127.0.0.1:8080/")
        .expect("a answers");
    let b = hosts[1]
        .http_get("http://127.0.0.1:8080/")
        .expect("b answers");
    assert_eq!(a, (200, "from-a\n".to_string()));
    assert_eq!(b, (200, "from-b\n".to_string()));
    // Each host's engine sees only its own containers, and they are healthy.
    for h in &hosts {
        let c = h.containers("demo");
        assert_eq!(c.len(), 1, "{}: {c:?}", h.name());
        assert_eq!(c[0].health, "healthy");
    }
    assert_ne!(
        hosts[0].containers("demo")[0].id,
        hosts[1].containers("demo")[0].id
    );
    // The machine's network is untouched while the engines run (their bridges, NAT rules and
    // forwarding live in the hosts' namespaces).
    assert_eq!(machine_network(), before);

    // Other tests run their own hosts meanwhile: only these two hosts' processes count.
    let dirs: Vec<String> = hosts
        .iter()
        .map(|h| h.machine_dir().display().to_string())
        .collect();
    for h in &mut hosts {
        h.stop();
    }
    for pid in dockerd {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "dockerd {pid} still running"
        );
    }
    let leftover = Command::new("pgrep")
        .args(["-f", &dirs.join("|")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&leftover.stdout).trim().is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
    assert_eq!(machine_network(), before);
    assert_eq!(
        fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .count(),
        mounts_before,
        "mounts left behind"
    );
}

#[test]
fn a_port_of_this_machine_is_reachable_at_the_same_url_inside_a_host() {
    let server = FileServer::start();
    server.set("/bundle", Reply::Body(b"bytes".to_vec()));
    let host = SimHost::start("fwd");
    // Before forwarding, the host's loopback has nothing there.
    assert_eq!(host.http_get(&server.url("/bundle")), None);
    let port: u16 = server
        .url("/")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    host.forward_port(port);
    assert_eq!(
        host.http_get(&server.url("/bundle")),
        Some((200, "bytes".to_string()))
    );
    // A port not forwarded stays unreachable.
    assert_eq!(
        host.http_get(&format!("http://127.0.0.1:{}/", free_port())),
        None
    );
}

#[test]
fn a_host_has_its_own_opt_and_home_with_the_compose_plugin() {
    let host = SimHost::start("fs");
    fs::create_dir_all(host.path("/opt/dropship/x")).unwrap();
    fs::write(host.path("/opt/dropship/x/marker"), "here").unwrap();
    let out = host
        .command("cat")
        .arg("/opt/dropship/x/marker")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "here");
    assert!(
        !std::path::Path::new("/opt/dropship/x/marker").exists(),
        "the host's /opt is not the machine's"
    );
    let v = host.docker(&["compose", "version", "--short"]);
    assert!(v.trim().starts_with('2'), "compose v2 plugin: {v}");
    let images = host.docker(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.lines().any(|l| l == IMAGE), "{images}");
}

#[test]
fn an_agent_script_runs_as_the_ssm_agent_runs_it_and_dies_with_its_group() {
    use dropship_tests::local_ssm::{ManagedInstance, StopReason, StopSignal};
    use dropship_tests::simhost::SimAgent;
    use std::time::Duration;
    let agent = SimAgent::new(SimHost::start("agent"), "i-0123", &[("k", "v")]);
    let stop = StopSignal::new(Duration::from_secs(600));
    let runner = {
        let (agent, stop) = (agent.clone(), stop.clone());
        std::thread::spawn(move || {
            agent.run_shell_script(
                "cmd-1",
                "echo \"$HOME|$PATH|$AWS_SSM_INSTANCE_ID|$(pwd)\"; sleep 600 & sleep 600",
                &stop,
            )
        })
    };
    // Both sleeps run inside the host.
    let sleeping = || {
        let out = agent
            .host()
            .command("pgrep")
            .args(["-c", "-x", "sleep"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    assert!(dropship_tests::host::wait_until(
        Duration::from_secs(10),
        || sleeping() == 2
    ));
    stop.cancel();
    let run = runner.join().unwrap();
    assert_eq!(run.stopped, Some(StopReason::Cancel));
    assert_eq!(run.exit_code, 137, "SIGKILL, as the agent reports it");
    assert!(dropship_tests::host::wait_until(
        Duration::from_secs(10),
        || sleeping() == 0
    ));
    assert_eq!(
        run.stdout,
        format!("|{}|i-0123|/\n", dropship_tests::simhost::AGENT_PATH),
        "no HOME, the agent's PATH, the instance id, run from /"
    );
    let dir = agent.host().path(
        "/var/lib/amazon/ssm/i-0123/document/orchestration/cmd-1/awsrunShellScript/0.awsrunShellScript",
    );
    assert!(dir.join("_script.sh").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("stdout")).unwrap(),
        run.stdout
    );
}

/// `curl` against the proxy's admin socket from inside the host: status and body.
fn proxy_admin(host: &SimHost, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
    let mut cmd = host.command("curl");
    cmd.args(["--silent", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(["--unix-socket", "/opt/proxy/admin.sock", "-X", method]);
    if let Some(body) = json {
        cmd.args(["-H", "Content-Type: application/json", "-d", body]);
    }
    let out = cmd.arg(format!("http://localhost{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A Caddy JSON config: admin API on a unix socket in the bind-mounted directory, one server
/// on :80 proxying to `upstream` through a route handler with the id `upstream`.
fn caddy_config(upstream: &str) -> String {
    serde_json::json!({
        "admin": {"listen": "unix//config/dropship/admin.sock"},
        "apps": {"http": {"servers": {"web": {
            "listen": [":80"],
            "automatic_https": {"disable": true},
            "routes": [{"handle": [{
                "handler": "reverse_proxy",
                "@id": "upstream",
                "upstreams": [{"dial": upstream}]
            }]}]
        }}}}
    })
    .to_string()
}

#[test]
fn a_proxy_switch_under_load_fails_no_careful_request_and_changes_the_answer_once() {
    use dropship_tests::host::wait_until;
    use dropship_tests::load::{Load, LoadSpec, Mode};
    use dropship_tests::simhost::PROXY_IMAGE;
    use std::time::{Duration, Instant};

    let host = SimHost::start("proxy");
    assert!(!host.has_image(PROXY_IMAGE), "opt-in: not loaded by start");
    let t = Instant::now();
    host.import_proxy_image();
    eprintln!("{PROXY_IMAGE} imported in {:?}", t.elapsed());
    assert!(host.has_image(PROXY_IMAGE));

    host.docker(&["network", "create", "edge"]);
    for v in ["v1", "v2"] {
        host.docker(&[
            "run",
            "-d",
            "--init",
            "--name",
            v,
            "--network",
            "edge",
            IMAGE,
            "sh",
            "-c",
            &format!(
                "mkdir -p /srv && echo {v} > /srv/version.txt && exec httpd -f -p 8000 -h /srv"
            ),
        ]);
    }
    fs::create_dir_all(host.path("/opt/proxy")).unwrap();
    fs::write(host.path("/opt/proxy/caddy.json"), caddy_config("v1:8000")).unwrap();
    host.docker(&[
        "run",
        "-d",
        "--name",
        "proxy",
        "--network",
        "edge",
        "-p",
        "127.0.0.1:8080:80",
        "-v",
        "/opt/proxy:/config/dropship",
        PROXY_IMAGE,
        "caddy",
        "run",
        "--resume",
        "--config",
        "/config/dropship/caddy.json",
    ]);
    let url = "http://127.0.0.1:8080/version.txt";
    assert!(
        wait_until(Duration::from_secs(30), || host.http_get(url)
            == Some((200, "v1\n".into()))),
        "the proxy never served v1: {:?}\n{}",
        host.http_get(url),
        String::from_utf8_lossy(&host.docker_output(&["logs", "proxy"]).stderr)
    );
    let (code, body) = proxy_admin(&host, "GET", "/reverse_proxy/upstreams", None);
    assert_eq!(code, 200, "{body}");
    let upstreams: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(upstreams[0]["address"], "v1:8000", "{body}");

    let load = Load::start(
        host.init_pid(),
        LoadSpec {
            addr: "127.0.0.1:8080".parse().unwrap(),
            path: "/version.txt".into(),
            rate_per_sec: 240,
            workers: 12,
            modes: Mode::ALL.to_vec(),
            timeout: Duration::from_secs(5),
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    load.mark("switch");
    let (code, body) = proxy_admin(
        &host,
        "PATCH",
        "/id/upstream/upstreams",
        Some(r#"[{"dial":"v2:8000"}]"#),
    );
    load.mark("switched");
    assert_eq!(code, 200, "PATCH: {body}");
    std::thread::sleep(Duration::from_secs(3));
    let report = load.stop();

    let (switch, switched) = (
        report.mark("switch").unwrap(),
        report.mark("switched").unwrap(),
    );
    eprintln!(
        "switch (PATCH) took {:.1} ms; p99 within ±1 s of it: {:.1} ms\n{}",
        (switched - switch).as_secs_f64() * 1e3,
        report
            .p99_ms_between(
                switch - Duration::from_secs(1),
                switched + Duration::from_secs(1)
            )
            .unwrap_or(f64::NAN),
        report.summary()
    );
    let from_switch = |t: Instant| {
        if t >= switch {
            (t - switch).as_secs_f64() * 1e3
        } else {
            -(switch - t).as_secs_f64() * 1e3
        }
    };
    for r in report.failures(Mode::Naive) {
        eprintln!(
            "naive failure (reported, not asserted): sent {:+.1} ms from the switch, worker {}, reused {}: {}",
            from_switch(r.sent),
            r.worker,
            r.reused,
            r.error.as_deref().unwrap_or("non-2xx")
        );
    }
    for mode in [Mode::Fresh, Mode::KeepAlive] {
        let failed = report.failures(mode);
        assert!(failed.is_empty(), "{mode:?} failures: {failed:#?}");
    }
    assert!(
        report.achieved_rate() >= 200.0,
        "inconclusive: only {:.1} req/s",
        report.achieved_rate()
    );
    assert_eq!(report.bodies_in_send_order(), ["v1", "v2"]);
    assert_eq!(report.transitions(), 1);
    // Every request sent after the PATCH returned got v2.
    let late_v1: Vec<_> = report
        .records
        .iter()
        .filter(|r| r.ok() && r.sent > switched && r.body != "v2")
        .collect();
    assert!(
        late_v1.is_empty(),
        "old answers after the switch: {late_v1:#?}"
    );

    // The drain signal: the old upstream has left the list once nothing is in flight.
    let (code, body) = proxy_admin(&host, "GET", "/reverse_proxy/upstreams", None);
    assert_eq!(code, 200, "{body}");
    let upstreams: serde_json::Value = serde_json::from_str(&body).unwrap();
    let addresses: Vec<&str> = upstreams
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["address"].as_str())
        .collect();
    assert_eq!(addresses, ["v2:8000"], "{body}");

    // The image can be taken away again (a host that never pulled it).
    host.docker(&["rm", "-f", "proxy"]);
    host.remove_image(PROXY_IMAGE);
    assert!(!host.has_image(PROXY_IMAGE));
}
