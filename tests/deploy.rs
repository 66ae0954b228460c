//! deploy/: the nginx site in front of a real `oddsfeed serve` with a wss client through it,
//! the systemd units through `systemd-analyze verify`, and the compose file through
//! `docker compose config` (or docker-compose).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shipped site, pointed at this test's server, port and certificate, inside a minimal
/// nginx.conf whose every path is in `dir`.
fn nginx_config(dir: &Path, upstream: &str, port: u16) -> PathBuf {
    let site = std::fs::read_to_string(Path::new(DEPLOY).join("nginx/oddsfeed.conf")).unwrap();
    let http_port = free_port();
    let site = site
        .replace("server 127.0.0.1:3001;", &format!("server {upstream};"))
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
        .replace("listen [::]:443 ssl;", "")
        .replace("listen 80;", &format!("listen 127.0.0.1:{http_port};"))
        .replace("listen [::]:80;", "")
        .replace(
            "/etc/ssl/oddsfeed/fullchain.pem",
            &dir.join("cert.pem").display().to_string(),
        )
        .replace(
            "/etc/ssl/oddsfeed/privkey.pem",
            &dir.join("key.pem").display().to_string(),
        );
    assert!(
        site.contains(upstream) && site.contains(&format!("127.0.0.1:{port} ssl")),
        "the site has the expected lines"
    );
    std::fs::write(dir.join("site.conf"), site).unwrap();
    let user = if unsafe_is_root() {
        "user root root;"
    } else {
        ""
    };
    let conf = format!(
        "{user}\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

struct Nginx(std::process::Child);

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers too (SIGKILL would orphan them).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_the_shipped_nginx_site() {
    let db = TestDb::new().await;
    seed_one_event(&db, "n1").await;
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("CONTROL_TOKEN", "tok".into()));
    let server = Server::start(&["serve"], &env).await;
    wait_published(&redis_url(), &channel).await;

    let (dir, cert) = self_signed_cert();
    let port = free_port();
    let conf = nginx_config(&dir, &server.addr, port);
    let test = Command::new("nginx")
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&*dir)
        .output()
        .expect("nginx is installed");
    assert!(
        test.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let _nginx = Nginx(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&*dir)
            .args(["-g", "daemon off;"])
            .spawn()
            .expect("start nginx"),
    );

    let nginx_addr = format!("127.0.0.1:{port}");
    let connect = || tls_connect(&nginx_addr, &cert);

    // https: health through the proxy; the control API wants the token behind it.
    let mut stream = eventually(WAIT, "nginx to accept TLS", connect).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut stream = connect().await.unwrap();
    stream
        .write_all(b"POST /api/sports/ws-publisher HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");

    // wss: snapshot, then a live diff.
    let mut client = wss_snapshot_then_diff(
        connect().await.unwrap(),
        &db,
        "sport:all",
        "n1",
        "UPDATE outcomes SET external_price = 0.7 WHERE event_id = 'n1' AND name = 'YES'",
    )
    .await;
    client.assert_usable().await;
    db.drop_db().await;
}

#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("systemd-analyze is not available here; units not verified");
        return;
    }
    let dir = TempPath::dir("systemd");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(Path::new(DEPLOY).join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/oddsfeed "),
            "{}",
            path.display()
        );
        assert!(
            text.contains("Restart=always") && text.contains("NoNewPrivileges=yes"),
            "{}",
            path.display()
        );
        // verify checks that ExecStart exists and EnvironmentFile is readable: point them here.
        let text = text
            .replace("/usr/local/bin/oddsfeed", env!("CARGO_BIN_EXE_oddsfeed"))
            .replace(
                "EnvironmentFile=/etc/oddsfeed/oddsfeed.env",
                "EnvironmentFile=-/etc/oddsfeed/oddsfeed.env",
            );
        let copy = dir.join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        units.push(copy);
    }
    assert_eq!(units.len(), 3, "serve, publisher and broadcaster units");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn compose_file_is_valid() {
    let file = Path::new(DEPLOY).join("docker-compose.yml");
    let attempts: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    for cmd in attempts {
        let available = Command::new(cmd[0]).args(&cmd[1..]).arg("version").output();
        if !available.is_ok_and(|o| o.status.success()) {
            continue;
        }
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("-f")
            .arg(&file)
            .arg("config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{} config:\n{stderr}", cmd.join(" "));
        let config = String::from_utf8_lossy(&out.stdout);
        for service in [
            "postgres:",
            "redis:",
            "oddsfeed:",
            "prometheus:",
            "grafana:",
        ] {
            assert!(config.contains(service), "{service} in\n{config}");
        }
        return;
    }
    println!(
        "neither `docker compose` nor docker-compose is available here; compose file not validated"
    );
}
