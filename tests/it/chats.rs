//! The team-chat actions against loopback servers that play DingTalk,
//! Feishu and WeCom as each documents its robot: the token in the URL, the
//! signature checked the service's way (DingTalk: `timestamp` and `sign` in
//! the query; Feishu: in the body), and every answer in the body with
//! HTTP 200 — success, a wrong signature, the rate limit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use warp::Filter;

use crate::helpers::*;

const TOKEN: &str = "robot-token-123";
const SECRET: &str = "SEC0123456789abcdef";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    DingTalk,
    Feishu,
    WeCom,
}

/// One of the services, on loopback.
#[derive(Clone)]
struct FakeChat {
    url: String,
    /// The bodies it took (signature fields included).
    received: Arc<Mutex<Vec<Value>>>,
    /// Rate-limit answers to give before taking messages again.
    throttle: Arc<Mutex<VecDeque<()>>>,
}

fn hmac_b64(key: &str, msg: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl FakeChat {
    async fn start(kind: Kind) -> FakeChat {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let throttle: Arc<Mutex<VecDeque<()>>> = Arc::default();
        let (r, t) = (received.clone(), throttle.clone());
        let route = warp::post()
            .and(warp::path::full())
            .and(warp::query::<HashMap<String, String>>())
            .and(warp::body::json::<Value>())
            .map(
                move |path: warp::path::FullPath, q: HashMap<String, String>, body: Value| {
                    let answer = answer(kind, path.as_str(), &q, &body, &t);
                    if answer.get("errcode").or(answer.get("code")) == Some(&json!(0)) {
                        r.lock().unwrap().push(body);
                    }
                    warp::reply::json(&answer)
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        let url = match kind {
            Kind::DingTalk => format!("http://{addr}/robot/send?access_token={TOKEN}"),
            Kind::Feishu => format!("http://{addr}/open-apis/bot/v2/hook/{TOKEN}"),
            Kind::WeCom => format!("http://{addr}/cgi-bin/webhook/send?key={TOKEN}"),
        };
        FakeChat {
            url,
            received,
            throttle,
        }
    }

    fn throttle_next(&self, n: usize) {
        self.throttle
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n((), n));
    }

    fn bodies(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

/// What the service answers, as its documentation and its servers do.
fn answer(
    kind: Kind,
    path: &str,
    q: &HashMap<String, String>,
    body: &Value,
    throttle: &Mutex<VecDeque<()>>,
) -> Value {
    let now_ms = easehook::now_ms() as i64;
    match kind {
        Kind::DingTalk => {
            if path != "/robot/send" || q.get("access_token").map(String::as_str) != Some(TOKEN) {
                return json!({"errcode": 300001, "errmsg": "token is not exist"});
            }
            // 加签: timestamp in ms within an hour, sign = base64(HMAC-SHA256(secret, ts\nsecret)).
            let ts = q.get("timestamp").and_then(|t| t.parse::<i64>().ok());
            let ok = ts.is_some_and(|ts| (now_ms - ts).abs() < 3_600_000)
                && q.get("sign") == Some(&hmac_b64(SECRET, &format!("{}\n{SECRET}", ts.unwrap())));
            if !ok {
                return json!({"errcode": 310000, "errmsg": "sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"});
            }
            if throttle.lock().unwrap().pop_front().is_some() {
                return json!({"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"});
            }
            let shaped = match body["msgtype"].as_str() {
                Some("text") => body["text"]["content"].is_string(),
                Some("markdown") => {
                    body["markdown"]["title"].is_string() && body["markdown"]["text"].is_string()
                }
                _ => false,
            };
            if !shaped {
                return json!({"errcode": 40035, "errmsg": "缺少参数 json"});
            }
            json!({"errcode": 0, "errmsg": "ok"})
        }
        Kind::Feishu => {
            if path != format!("/open-apis/bot/v2/hook/{TOKEN}") {
                return json!({"code": 19001, "msg": "param invalid: incoming webhook access token invalid", "data": {}});
            }
            // 签名校验: timestamp in s within an hour, sign = base64(HMAC-SHA256(ts\nsecret, "")).
            let ts = body["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<i64>().ok());
            let ok = ts.is_some_and(|ts| (now_ms / 1000 - ts).abs() < 3600)
                && body["sign"].as_str()
                    == Some(&hmac_b64(&format!("{}\n{SECRET}", ts.unwrap()), ""));
            if !ok {
                return json!({"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time", "data": {}});
            }
            if throttle.lock().unwrap().pop_front().is_some() {
                return json!({"code": 11232, "msg": "frequency limited psm[lark.oapi.app_platform_runtime]", "data": {}});
            }
            let shaped = match body["msg_type"].as_str() {
                Some("text") => body["content"]["text"].is_string(),
                Some("interactive") => body["card"].is_object(),
                _ => false,
            };
            if !shaped {
                return json!({"code": 9499, "msg": "Bad Request", "data": {}});
            }
            json!({"code": 0, "msg": "success", "data": {}})
        }
        Kind::WeCom => {
            if path != "/cgi-bin/webhook/send" || q.get("key").map(String::as_str) != Some(TOKEN) {
                return json!({"errcode": 93000, "errmsg": "invalid webhook url, hint: [1700000000_1_abc], from ip: 127.0.0.1"});
            }
            if throttle.lock().unwrap().pop_front().is_some() {
                return json!({"errcode": 45009, "errmsg": "api freq out of limit"});
            }
            let shaped = match body["msgtype"].as_str() {
                Some("text") => body["text"]["content"].is_string(),
                Some("markdown") => body["markdown"]["content"].is_string(),
                _ => false,
            };
            if !shaped {
                return json!({"errcode": 40008, "errmsg": "invalid message type"});
            }
            json!({"errcode": 0, "errmsg": "ok"})
        }
    }
}

/// A daemon whose one rule sends every ban to `action` (YAML of one action).
async fn daemon(action: &str) -> TestApp {
    spawn_app_with(
        Options::rules(format!(
            "actions:\n  chat:\n{action}\nrules:\n  - {{name: bans, when: {{event: roster:ban}}, actions: [chat]}}\n"
        ))
        .env("CHAT_SECRET", SECRET),
    )
    .await
}

async fn ban(app: &TestApp) {
    let (status, answer) = app.post(&signed("roster:ban", "张三", "bob")).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn dingtalk_markdown_signed_with_mentions_arrives_as_dingtalk_expects() {
    let ding = FakeChat::start(Kind::DingTalk).await;
    let app = daemon(&format!(
        "    type: dingtalk\n    webhook_url: '{}'\n    secret: ${{CHAT_SECRET}}\n    rate_limit: 100/s\n\
         \x20   title: 拉黑通知\n    markdown: '**{{{{from_user}}}}** 拉黑了 **{{{{to_user}}}}**'\n\
         \x20   at_mobiles: ['13800000000']\n",
        ding.url
    ))
    .await;
    ban(&app).await;
    let d = app.wait_for_delivery("sent", Duration::from_secs(10)).await;
    assert_eq!(d["attempts"], 1);
    let body = &ding.bodies()[0];
    assert_eq!(body["msgtype"], "markdown");
    assert_eq!(body["markdown"]["title"], "拉黑通知");
    assert_eq!(
        body["markdown"]["text"],
        "**张三** 拉黑了 **bob** @13800000000"
    );
    assert_eq!(body["at"]["atMobiles"], json!(["13800000000"]));
    assert_eq!(body["at"]["isAtAll"], false);
}

#[tokio::test]
async fn dingtalk_wrong_secret_is_dead_with_dingtalks_message() {
    let ding = FakeChat::start(Kind::DingTalk).await;
    let app = daemon(&format!(
        "    type: dingtalk\n    webhook_url: '{}'\n    secret: SECwrong\n    text: '{{{{from_user}}}} 拉黑了 {{{{to_user}}}}'\n",
        ding.url
    ))
    .await;
    ban(&app).await;
    let d = app.wait_for_delivery("dead", Duration::from_secs(10)).await;
    assert_eq!(d["attempts"], 1, "a wrong signature is not retried: {d}");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .starts_with("dingtalk error 310000: sign not match"),
        "{d}"
    );
    assert!(ding.bodies().is_empty());
}

#[tokio::test]
async fn dingtalk_rate_limit_is_retried_then_sent() {
    let ding = FakeChat::start(Kind::DingTalk).await;
    ding.throttle_next(1);
    let app = daemon(&format!(
        "    type: dingtalk\n    webhook_url: '{}'\n    secret: ${{CHAT_SECRET}}\n    text: '{{{{from_user}}}} 拉黑了 {{{{to_user}}}}'\n",
        ding.url
    ))
    .await;
    ban(&app).await;
    let d = app.wait_for_delivery("sent", Duration::from_secs(10)).await;
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(ding.bodies()[0]["text"]["content"], "张三 拉黑了 bob");
}

#[tokio::test]
async fn feishu_text_and_card_signed_arrive_and_a_wrong_secret_is_dead() {
    let feishu = FakeChat::start(Kind::Feishu).await;
    feishu.throttle_next(1);
    let app = spawn_app_with(
        Options::rules(format!(
            "actions:\n\
             \x20 text:\n    type: feishu\n    webhook_url: '{url}'\n    secret: ${{CHAT_SECRET}}\n    rate_limit: 100/s\n\
             \x20   text: '{{{{from_user}}}} 拉黑了 {{{{to_user}}}}'\n    at_users: [ou_abc]\n\
             \x20 card:\n    type: feishu\n    webhook_url: '{url}'\n    secret: ${{CHAT_SECRET}}\n    rate_limit: 100/s\n\
             \x20   card:\n      header: {{title: {{tag: plain_text, content: '拉黑通知'}}}}\n\
             \x20     elements: [{{tag: div, text: {{tag: lark_md, content: '**{{{{from_user}}}}** → {{{{to_user}}}}'}}}}]\n\
             \x20 wrong:\n    type: feishu\n    webhook_url: '{url}'\n    secret: not-the-secret\n    text: x\n\
             rules:\n  - {{name: bans, when: {{event: roster:ban}}, actions: [text, card, wrong]}}\n",
            url = feishu.url
        ))
        .env("CHAT_SECRET", SECRET),
    )
    .await;
    ban(&app).await;
    eventually(Duration::from_secs(10), "two sent, one dead", || async {
        app.deliveries("sent").await.len() == 2 && app.deliveries("dead").await.len() == 1
    })
    .await;
    let dead = &app.deliveries("dead").await[0];
    assert_eq!(dead["action"], "wrong");
    assert_eq!(
        dead["last_error"],
        "feishu error 19021: sign match fail or timestamp is not within one hour from current time"
    );
    let bodies = feishu.bodies();
    let text = bodies.iter().find(|b| b["msg_type"] == "text").unwrap();
    assert_eq!(
        text["content"]["text"],
        "张三 拉黑了 bob <at user_id=\"ou_abc\"></at>"
    );
    let card = bodies
        .iter()
        .find(|b| b["msg_type"] == "interactive")
        .unwrap();
    assert_eq!(card["card"]["header"]["title"]["content"], "拉黑通知");
    assert_eq!(
        card["card"]["elements"][0]["text"]["content"],
        "**张三** → bob"
    );
    // The throttled first attempt was retried: three attempts for two messages.
    let attempts: u64 = app
        .deliveries("sent")
        .await
        .iter()
        .map(|d| d["attempts"].as_u64().unwrap())
        .sum();
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn wecom_text_with_mentions_markdown_rate_limit_and_a_wrong_key() {
    let wecom = FakeChat::start(Kind::WeCom).await;
    wecom.throttle_next(1);
    let wrong_key = wecom.url.replace(TOKEN, "nope");
    let app = spawn_app_with(Options::rules(format!(
        "actions:\n\
         \x20 text:\n    type: wecom\n    webhook_url: '{url}'\n    rate_limit: 100/s\n\
         \x20   text: '{{{{from_user}}}} 拉黑了 {{{{to_user}}}}'\n    at_users: [wangqing]\n    at_mobiles: ['13800001111']\n    at_all: true\n\
         \x20 md:\n    type: wecom\n    webhook_url: '{url}'\n    rate_limit: 100/s\n\
         \x20   markdown: '**{{{{from_user}}}}** 拉黑了 <font color=\"warning\">{{{{to_user}}}}</font>'\n\
         \x20 wrong:\n    type: wecom\n    webhook_url: '{wrong_key}'\n    text: x\n\
         rules:\n  - {{name: bans, when: {{event: roster:ban}}, actions: [text, md, wrong]}}\n",
        url = wecom.url
    )))
    .await;
    ban(&app).await;
    eventually(Duration::from_secs(10), "two sent, one dead", || async {
        app.deliveries("sent").await.len() == 2 && app.deliveries("dead").await.len() == 1
    })
    .await;
    let dead = &app.deliveries("dead").await[0];
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .starts_with("wecom error 93000: invalid webhook url"),
        "{dead}"
    );
    let bodies = wecom.bodies();
    let text = bodies.iter().find(|b| b["msgtype"] == "text").unwrap();
    assert_eq!(text["text"]["content"], "张三 拉黑了 bob");
    assert_eq!(text["text"]["mentioned_list"], json!(["wangqing", "@all"]));
    assert_eq!(
        text["text"]["mentioned_mobile_list"],
        json!(["13800001111"])
    );
    let md = bodies.iter().find(|b| b["msgtype"] == "markdown").unwrap();
    assert_eq!(
        md["markdown"]["content"],
        "**张三** 拉黑了 <font color=\"warning\">bob</font>"
    );
}

#[tokio::test]
async fn the_shipped_dingtalk_and_wecom_ban_notifications_arrive_once_their_urls_are_set() {
    let ding = FakeChat::start(Kind::DingTalk).await;
    let wecom = FakeChat::start(Kind::WeCom).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("rules/15-ban-chat.yaml")).unwrap();
    let app = spawn_app_with(
        Options::rules(shipped)
            .env("DINGTALK_WEBHOOK_URL", &ding.url)
            .env("DINGTALK_SECRET", SECRET)
            .env("WECOM_WEBHOOK_URL", &wecom.url),
    )
    .await;
    ban(&app).await;
    eventually(Duration::from_secs(10), "both robots told", || async {
        app.deliveries("sent").await.len() == 2
    })
    .await;
    let d = &ding.bodies()[0];
    assert_eq!(d["markdown"]["title"], "拉黑通知");
    assert!(
        d["markdown"]["text"]
            .as_str()
            .unwrap()
            .contains("**拉黑者**：张三"),
        "{d}"
    );
    let w = &wecom.bodies()[0];
    assert!(
        w["markdown"]["content"]
            .as_str()
            .unwrap()
            .contains("被拉黑：bob"),
        "{w}"
    );
}
