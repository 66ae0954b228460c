//! Every PromQL expression of every Grafana panel, evaluated by a real Prometheus scraping a
//! real `oddsfeed serve --simulate`: each must be valid and return at least one series.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/dashboards");

/// Every (panel title, expr) of a dashboard, rows included.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((
                        panel["title"].as_str().unwrap_or("?").to_string(),
                        expr.to_string(),
                    ));
                }
            }
            walk(panel["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    let mut out = Vec::new();
    walk(
        dashboard["panels"].as_array().map_or(&[], Vec::as_slice),
        &mut out,
    );
    out
}

/// Grafana's built-in interval variables, as Grafana would expand them for a 1 s scrape.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("$__interval", "5s")
        .replace("$__range", "1m")
}

struct Prometheus {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(target: &str) -> Prometheus {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("oddsfeed-prom-{}", random_suffix()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: oddsfeed\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus is installed (scripts/services.sh installs Debian's prometheus)");
    Prometheus {
        child,
        dir,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn query(prom: &str, expr: &str) -> Result<Value, String> {
    let resp = reqwest::Client::new()
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_expression_is_valid_and_returns_series() {
    let db = TestDb::new().await;
    oddsfeed::sim::seed::seed(&db.pool, 40, 1, false)
        .await
        .unwrap();
    let (mut env, channel) = publisher_env(&db, &redis_url());
    env.push(("SIM_INTERVAL_MS", "200".into()));
    let server = Server::start(&["serve", "--simulate"], &env).await;
    wait_published(&redis_url(), &channel).await;
    // A browser-like client: subscribed, and reporting its latency once a second.
    let (mut client, _) = WsClient::connect_welcomed(&format!("ws://{}/ws", server.addr)).await;
    client
        .send(json!({"type": "subscribe", "room": "sport:all"}))
        .await;
    client
        .expect_type("snapshot", Duration::from_secs(10))
        .await;

    let prom = start_prometheus(&server.addr);
    eventually(
        Duration::from_secs(30),
        "Prometheus to scrape oddsfeed",
        || {
            let url = prom.url.clone();
            async move {
                let up = query(&url, "up{job=\"oddsfeed\"} == 1").await.ok()?;
                (!up.as_array()?.is_empty()).then_some(())
            }
        },
    )
    .await;
    // Enough samples for every rate() window.
    let until = Instant::now() + Duration::from_secs(8);
    let mut ms = 5.0;
    while Instant::now() < until {
        client.send(json!({"type": "latency", "ms": ms})).await;
        ms += 1.0;
        // Keep reading (the room is busy) for just over a second: one report a second counts.
        let next = Instant::now() + Duration::from_millis(1050);
        while Instant::now() < next {
            client
                .next_json(next.saturating_duration_since(Instant::now()))
                .await;
        }
    }

    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(DASHBOARDS).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let exprs = expressions(&dashboard);
        assert!(
            !exprs.is_empty(),
            "{} has panels with expressions",
            path.display()
        );
        for (title, expr) in exprs {
            checked += 1;
            match query(&prom.url, &expand(&expr)).await {
                Ok(result) if result.as_array().is_some_and(|r| !r.is_empty()) => {}
                Ok(_) => failures.push(format!("{title}: no series for {expr}")),
                Err(e) => failures.push(format!("{title}: invalid {expr}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} expressions failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("{checked} panel expressions valid and returning series");

    // The browser latency really is in the histogram, not only registered.
    let count = query(&prom.url, "sum(oddsfeed_browser_latency_seconds_count)")
        .await
        .unwrap();
    let count: f64 = count[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(count >= 5.0, "browser latency reports recorded: {count}");
    db.drop_db().await;
}
