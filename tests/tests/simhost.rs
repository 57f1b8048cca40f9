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
