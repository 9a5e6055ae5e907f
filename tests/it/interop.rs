//! Email interop with an independent SMTP implementation: Debian's aiosmtpd
//! (`python3-aiosmtpd`, installed by `.ci/run`), over STARTTLS with AUTH and
//! over implicit TLS with AUTH. Skips with a notice where it is missing,
//! fails where it is missing under `CI=true`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mail_parser::MessageParser;

use crate::helpers::*;

const PYTHON: &str = "/usr/bin/python3";

fn aiosmtpd_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn email_reaches_aiosmtpd_over_starttls_and_implicit_tls_with_auth() {
    if !require(
        aiosmtpd_available(),
        &format!(
            "email interop test: {PYTHON} cannot import aiosmtpd (apt-get install python3-aiosmtpd)"
        ),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates();
    for (name, pem) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let out = dir.path().join("mail");
    std::fs::create_dir(&out).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/smtp_server.py");
    let mut server = Command::new(PYTHON)
        .arg(&script)
        .arg(dir.path().join("cert.pem"))
        .arg(dir.path().join("key.pem"))
        .args([SMTP_USER, SMTP_PASSWORD])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ports: Vec<u16> = line
        .trim()
        .strip_prefix("READY ")
        .expect(&line)
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    let ca_file = dir.path().join("ca.pem").display().to_string();
    let config = format!(
        "smtp:\n  starttls: {{host: 127.0.0.1, port: {}, tls: starttls, username: {SMTP_USER}, password: '${{SMTP_PASSWORD}}', from: 'easehook <hook@example.com>', ca_file: '{ca_file}'}}\n  \
         implicit: {{host: 127.0.0.1, port: {}, tls: tls, username: {SMTP_USER}, password: '${{SMTP_PASSWORD}}', from: 'easehook <hook@example.com>', ca_file: '{ca_file}'}}\n",
        ports[0], ports[1]
    );
    let rules = "actions:\n\
                 \x20 a: {type: email, smtp: starttls, to: [a@example.com], subject: '封禁 {{from_user}} (starttls)', text: '{{from_user}} → {{to_user}}', html: '<p>{{from_user}}</p>'}\n\
                 \x20 b: {type: email, smtp: implicit, to: [b@example.com], subject: '封禁 {{from_user}} (tls)', text: '{{from_user}} → {{to_user}}'}\n\
                 rules:\n  - {name: r, actions: [a, b]}\n";
    let app = spawn_app_with(
        Options::rules(rules)
            .config(config)
            .env("SMTP_PASSWORD", SMTP_PASSWORD),
    )
    .await;
    assert_eq!(
        app.post(&signed("roster:ban", "李雷", "韩梅梅")).await.0,
        200
    );
    eventually(
        Duration::from_secs(30),
        "two messages at aiosmtpd",
        || async {
            std::fs::read_dir(&out)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "json")
                })
                .count()
                == 2
        },
    )
    .await;
    let mut seen = Vec::new();
    for n in 1..=2 {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("{n}.json"))).unwrap())
                .unwrap();
        let data = std::fs::read(out.join(format!("{n}.eml"))).unwrap();
        let msg = MessageParser::default().parse(&data).unwrap();
        assert_eq!(meta["auth"], SMTP_USER, "AUTH used: {meta}");
        assert_eq!(meta["tls"], true, "encrypted: {meta}");
        assert_eq!(msg.body_text(0).unwrap().trim(), "李雷 → 韩梅梅");
        seen.push(msg.subject().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["封禁 李雷 (starttls)", "封禁 李雷 (tls)"]);
    drop(server.stdin.take());
    let _ = server.kill();
    let _ = server.wait();
}
