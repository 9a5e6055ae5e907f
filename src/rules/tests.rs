use std::collections::HashMap;

use serde_json::json;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    settings: Settings,
}

fn fixture(files: &[(&str, &str)], templates: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join("rules").join(name), body).unwrap();
    }
    for (name, body) in templates {
        std::fs::write(dir.path().join("templates").join(name), body).unwrap();
    }
    let cfg = dir.path().join("easehook.yaml");
    std::fs::write(&cfg, "secrets: {\"*\": [\"${S}\"]}\ntimezone: UTC\n").unwrap();
    let settings = crate::config::load(&cfg, &env()).unwrap();
    Fixture {
        _dir: dir,
        settings,
    }
}

fn env() -> HashMap<String, String> {
    HashMap::from([
        ("S".to_string(), "sekrit-value".to_string()),
        ("HOOK_TOKEN".into(), "tok-123456".into()),
    ])
}

fn load(files: &[(&str, &str)]) -> Result<RuleSet, Diagnostics> {
    let f = fixture(files, &[]);
    RuleSet::load(&f.settings, &env())
}

fn cb(event: &str, from: &str) -> Callback {
    Callback::from_value(samples::body(event, "org#app", from, "bob", "1", 1)).unwrap()
}

fn names(set: &RuleSet, e: &Evaluation) -> (Vec<String>, Vec<String>) {
    (
        e.rules.iter().map(|&i| set.rules[i].name.clone()).collect(),
        e.deliveries
            .iter()
            .map(|p| format!("{}<-{}", set.actions[p.action].name, set.rules[p.rule].name))
            .collect(),
    )
}

const ACTIONS: &str = "actions:\n  a: {type: log, message: a}\n  b: {type: log, message: b}\n  c: {type: log, message: c}\n";

#[test]
fn order_stop_and_each_action_once() {
    let set = load(&[(
        "10-main.yaml",
        &format!(
            "{ACTIONS}rules:\n\
             - {{name: bans, when: {{event: roster:ban}}, actions: [a, b]}}\n\
             - {{name: roster-all, when: {{event: roster}}, actions: [b, c]}}\n\
             - {{name: quiet-tests, when: {{from: 'test_*'}}, actions: [], stop: true}}\n\
             - {{name: everything, actions: [c]}}\n"
        ),
    )])
    .unwrap();
    let e = set.evaluate(&cb("roster:ban", "alice"));
    assert_eq!(
        names(&set, &e),
        (
            vec!["bans".into(), "roster-all".into(), "everything".into()],
            vec!["a<-bans".into(), "b<-bans".into(), "c<-roster-all".into()]
        )
    );
    let e = set.evaluate(&cb("roster:ban", "test_x"));
    assert_eq!(names(&set, &e).0, vec!["bans", "roster-all", "quiet-tests"]);
    let e = set.evaluate(&cb("chat", "alice"));
    assert_eq!(
        names(&set, &e),
        (vec!["everything".into()], vec!["c<-everything".into()])
    );
}

#[test]
fn when_unless_and_paths() {
    let set = load(&[(
        "r.yaml",
        &format!(
            "{ACTIONS}rules:\n\
             - name: ok-bans\n  when: {{event: roster:ban, eventType: [chat, chat_offline], payload.status.error_code: ok}}\n  unless: {{from: 'test_*'}}\n  actions: [a]\n\
             - name: accepts\n  when: {{event: 'roster:*accept'}}\n  actions: [b]\n"
        ),
    )])
    .unwrap();
    assert_eq!(
        names(&set, &set.evaluate(&cb("roster:ban", "alice"))).0,
        vec!["ok-bans"]
    );
    assert!(set.evaluate(&cb("roster:ban", "test_1")).rules.is_empty());
    let mut failed = samples::body("roster:ban", "org#app", "alice", "bob", "1", 1);
    failed["payload"]["status"]["error_code"] = json!("fail");
    assert!(
        set.evaluate(&Callback::from_value(failed).unwrap())
            .rules
            .is_empty()
    );
    assert_eq!(
        names(&set, &set.evaluate(&cb("roster:remote_accept", "x"))).0,
        vec!["accepts"]
    );
    assert_eq!(
        names(&set, &set.evaluate(&cb("roster:accept", "x"))).0,
        vec!["accepts"]
    );
    assert!(set.evaluate(&cb("roster:decline", "x")).rules.is_empty());
}

#[test]
fn disabled_actions_are_skipped_and_reported() {
    let set = load(&[(
        "r.yaml",
        "actions:\n  off: {type: log, message: x, enabled: \"${NOT_SET:+true}\"}\n  on: {type: log, message: y}\nrules:\n  - {name: r, actions: [off, on]}\n",
    )])
    .unwrap();
    let e = set.evaluate(&cb("roster:ban", "a"));
    assert_eq!(names(&set, &e).1, vec!["on<-r"]);
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("action off: disabled")),
        "{:?}",
        set.warnings
    );
}

#[test]
fn actions_and_rules_span_files_in_name_order() {
    let set = load(&[
        ("20-b.yaml", "rules:\n  - {name: second, actions: [late]}\n"),
        ("10-a.yaml", "rules:\n  - {name: first, actions: [late]}\n"),
        ("30-c.yml", "actions:\n  late: {type: log, message: hi}\n"),
        ("notes.txt", "not: [yaml"),
    ])
    .unwrap();
    assert_eq!(
        set.rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["first", "second"]
    );
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let err = load(&[
        (
            "a.yaml",
            "actions:\n\
             \x20 mail: {type: email, to: [ops@example.com], subject: hi, text: {template: missing.hbs}}\n\
             \x20 hook: {type: http, url: 'https://x.example/{{event}}', json: {a: '{{nope}}'}}\n\
             \x20 bad: {type: pigeon}\n\
             \x20 typo: {type: log, mesage: x}\n\
             \x20 slack: {type: slack, webhook_url: 'https://hooks.example/T/${HOOK_TOKEN}', text: '{{#if}}'}\n\
             rules:\n\
             \x20 - {name: r1, when: {from: {regex: '('}}, actions: [hook]}\n\
             \x20 - {name: r2, actions: [ghost]}\n\
             \x20 - {name: r3, wen: {event: x}, actions: []}\n",
        ),
        ("b.yaml", "rules:\n  - {name: r1, actions: []}\nextra: 1\n"),
    ])
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "a.yaml: action mail: text: template file \"missing.hbs\" not found",
        "a.yaml: action bad: type: unknown action type \"pigeon\"",
        "a.yaml: action typo: mesage: unknown field `mesage`",
        "a.yaml: action slack: text: line 1 column",
        "a.yaml: rule r1: when.from: invalid regex",
        "a.yaml: rule r2: unknown action `ghost`",
        "a.yaml: rule r3: wen: unknown field `wen`",
        "b.yaml: extra: unknown field `extra`",
        "b.yaml: rule r1: is already defined in",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("tok-123456"), "{text}");
}

#[test]
fn templates_that_fail_for_a_sample_event_are_reported() {
    let err = load(&[(
        "a.yaml",
        "actions:\n  reason: {type: log, message: 'asked: {{payload.reason}}'}\nrules:\n  - {name: all-roster, when: {event: roster}, actions: [reason]}\n",
    )])
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("action reason: fails to render for a sample roster:remove event"),
        "{err}"
    );
    // Restricted to `add`, the same template is fine.
    load(&[(
        "a.yaml",
        "actions:\n  reason: {type: log, message: 'asked: {{payload.reason}}'}\nrules:\n  - {name: adds, when: {event: roster:add}, actions: [reason]}\n",
    )])
    .unwrap();
}

#[test]
fn rendering_escapes_by_destination_and_builds_json_safely() {
    let f = fixture(
        &[(
            "a.yaml",
            "actions:\n\
             \x20 mail: {type: email, to: [ops@example.com], subject: 'New request from {{from_user}}', text: {template: t.hbs}, html: '<p>{{payload.reason}}</p>'}\n\
             \x20 hook: {type: http, url: 'https://audit.example/{{event}}?who={{from_user}}', headers: {Authorization: 'Bearer ${HOOK_TOKEN}'}, json: {reason: '{{payload.reason}}', n: 1}}\n\
             \x20 slack: {type: slack, webhook_url: 'https://hooks.example/T/${HOOK_TOKEN}', text: '*{{from_user}}*: {{payload.reason}}', blocks: [{type: section, text: {type: mrkdwn, text: '{{payload.reason}}'}}]}\n\
             rules:\n  - {name: adds, when: {event: roster:add}, actions: [mail, hook, slack]}\n",
        )],
        &[("t.hbs", "{{from_user}} says: {{payload.reason}}")],
    );
    let set = RuleSet::load(&f.settings, &env()).unwrap();
    let hostile = "{{from}} \"quoted\" <b>&</b>\n第二行";
    let mut body = samples::body("roster:add", "org#app", "a b", "bob", "1", 1);
    body["payload"]["reason"] = json!(hostile);
    let cb = Callback::from_value(body).unwrap();
    let e = set.evaluate(&cb);
    let received = chrono::Utc::now();
    let render = |name: &str| {
        let a = set.action(name).unwrap();
        let data = crate::template::Data::new(&cb, received, a.reads, "adds", name);
        a.render(&set.templates, &data).unwrap()
    };
    assert_eq!(e.deliveries.len(), 3);
    let crate::actions::Message::Email(m) = render("mail") else {
        panic!()
    };
    assert_eq!(
        m.text.as_deref(),
        Some(format!("a b says: {hostile}").as_str())
    );
    assert_eq!(
        m.html.as_deref(),
        Some("<p>{{from}} &quot;quoted&quot; &lt;b&gt;&amp;&lt;/b&gt;\n第二行</p>")
    );
    assert_eq!(m.subject, "New request from a b");
    let crate::actions::Message::Http(h) = render("hook") else {
        panic!()
    };
    assert_eq!(h.url, "https://audit.example/roster%3Aadd?who=a%20b");
    let sent: serde_json::Value = serde_json::from_str(h.body.as_deref().unwrap()).unwrap();
    assert_eq!(sent, json!({"reason": hostile, "n": 1}));
    let crate::actions::Message::Slack(s) = render("slack") else {
        panic!()
    };
    assert_eq!(
        s.body["text"],
        json!("*a b*: {{from}} \"quoted\" &lt;b&gt;&amp;&lt;/b&gt;\n第二行")
    );
    assert_eq!(
        s.body["blocks"][0]["text"]["text"],
        s.body["text"].as_str().unwrap().replacen("*a b*: ", "", 1)
    );
    let described = crate::actions::Message::Http(h).describe(&f.settings.redactor);
    assert!(described.contains("Authorization: ***"), "{described}");
    assert!(!described.contains("tok-123456"));
}

/// A JSON body is written as `serde_json` writes the same value: compact,
/// keys in the order written, every kind of literal, nested, and rendered
/// text always a string however it looks.
#[test]
fn json_bodies_are_written_as_their_values_would_be() {
    let set = load(&[(
        "a.yaml",
        "actions:\n\
         \x20 hook:\n\
         \x20   type: http\n\
         \x20   url: https://x.example/\n\
         \x20   json:\n\
         \x20     z: '{{payload.reason}}'\n\
         \x20     a: [1, -2.5, true, null, '{{from_user}}', [], {}, [{k: '{{event}} \"q\" \\'}]]\n\
         \x20     键: {n: 10000000000000, s: plain, t: '{{timestamp}}', e: ''}\n\
         rules:\n  - {name: adds, when: {event: roster:add}, actions: [hook]}\n",
    )])
    .unwrap();
    let hostile = "\"},{\"x\":1,\u{7}\t</script>第二行";
    let mut body = samples::body("roster:add", "org#app", "a b", "bob", "1", 1);
    body["payload"]["reason"] = json!(hostile);
    let cb = Callback::from_value(body).unwrap();
    let hook = set.action("hook").unwrap();
    let data = crate::template::Data::new(&cb, chrono::Utc::now(), hook.reads, "adds", "hook");
    let crate::actions::Message::Http(h) = hook.render(&set.templates, &data).unwrap() else {
        panic!()
    };
    let want = json!({
        "z": hostile,
        "a": [1, -2.5, true, null, "a b", [], {}, [{"k": "roster:add \"q\" \\"}]],
        "键": {"n": 10000000000000u64, "s": "plain", "t": "1", "e": ""}
    });
    assert_eq!(h.body.as_deref(), Some(want.to_string().as_str()));
}

fn many_rules(n: usize) -> String {
    let ops = crate::callback::ROSTER_OPERATIONS;
    let mut s = String::from("actions:\n  a: {type: log, message: x}\nrules:\n");
    for i in 0..n {
        s += &format!(
            "  - {{name: r{i}, when: {{event: 'roster:{}{}', from: 'user{i}'}}, actions: [a]}}\n",
            ops[i % 8],
            i / 8
        );
    }
    s += "  - {name: bans, when: {event: roster:ban}, actions: [a]}\n";
    s
}

#[test]
fn the_index_visits_only_candidate_rules_but_keeps_order() {
    let set = load(&[("many.yaml", &many_rules(1000))]).unwrap();
    let e = set.evaluate(&cb("roster:ban", "alice"));
    assert_eq!(names(&set, &e).0, vec!["bans"]);
    // Rules pin `from: userN`: alice's event visits only the unpinned rule.
    assert_eq!(
        set.index
            .candidates(&cb("roster:ban", "alice"))
            .collect::<Vec<_>>(),
        vec![1000]
    );
    let user6 = cb("roster:ban0", "user6");
    assert_eq!(set.index.candidates(&user6).collect::<Vec<_>>(), vec![6]);
    assert_eq!(names(&set, &set.evaluate(&user6)).0, vec!["r6"]);
    // A family rule is found through the family; lists of values through each.
    let set = load(&[(
        "f.yaml",
        "actions:\n  a: {type: log, message: x}\nrules:\n  - {name: fam, when: {event: roster}, actions: [a]}\n  - {name: two, when: {to: [bob, carol]}, actions: [a]}\n  - {name: glob, when: {from: 'a*'}, actions: [a]}\n",
    )])
    .unwrap();
    assert_eq!(
        names(&set, &set.evaluate(&cb("roster:add", "alice"))).0,
        vec!["fam", "two", "glob"]
    );
    assert_eq!(
        names(&set, &set.evaluate(&cb("chat", "zed"))).0,
        vec!["two"]
    );
}

#[test]
fn team_chat_actions_are_checked_and_keep_their_services_limits() {
    let set = load(&[(
        "a.yaml",
        "actions:\n\
         \x20 ding: {type: dingtalk, webhook_url: 'https://oapi.example/robot/send?access_token=t', text: hi}\n\
         \x20 wecom: {type: wecom, webhook_url: 'https://qyapi.example/cgi-bin/webhook/send?key=k', markdown: hi}\n\
         \x20 feishu: {type: feishu, webhook_url: 'https://open.example/open-apis/bot/v2/hook/x', text: hi}\n\
         \x20 slow: {type: feishu, webhook_url: 'https://open.example/open-apis/bot/v2/hook/x', text: hi, rate_limit: 5/min}\n",
    )])
    .unwrap();
    let limit = |name: &str| {
        let a = set.actions.iter().find(|a| a.name == name).unwrap();
        a.rate_limit.map(|r| (r.count, r.per.as_secs()))
    };
    assert_eq!(limit("ding"), Some((20, 60)));
    assert_eq!(limit("wecom"), Some((20, 60)));
    assert_eq!(limit("feishu"), Some((100, 60)));
    assert_eq!(limit("slow"), Some((5, 60)));

    let err = load(&[(
        "a.yaml",
        "actions:\n\
         \x20 a: {type: dingtalk, webhook_url: 'https://x.example/', markdown: hi}\n\
         \x20 b: {type: dingtalk, webhook_url: 'https://x.example/', text: hi, markdown: hi, title: t}\n\
         \x20 c: {type: wecom, webhook_url: 'nowhere', text: hi}\n\
         \x20 d: {type: feishu, webhook_url: 'https://x.example/', at_mobiles: ['1']}\n\
         \x20 e: {type: wecom, webhook_url: 'https://x.example/', markdown: hi, at_all: true}\n\
         \x20 f: {type: dingtalk, webhook_url: 'https://x.example/', text: hi, tilte: x}\n",
    )])
    .unwrap_err()
    .to_string();
    for needle in [
        "a.yaml: action a: title: a markdown message needs a title",
        "a.yaml: action b: has both `text` and `markdown`; give one",
        "a.yaml: action c: webhook_url: is not an http(s) URL",
        "a.yaml: action d: needs `text` or `card`",
        "a.yaml: action d: at_mobiles: Feishu mentions by open id: use at_users",
        "a.yaml: action e: at_mobiles: a WeCom markdown message can mention at_users only",
        "a.yaml: action f: unknown field `tilte`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// A rule set with this config (instead of the default one) and rule file.
fn load_with_config(config: &str, rules: &str) -> Result<RuleSet, Diagnostics> {
    let f = fixture(&[("a.yaml", rules)], &[]);
    let cfg = f.settings.path.clone();
    std::fs::write(&cfg, config).unwrap();
    let settings = crate::config::load(&cfg, &env()).unwrap();
    RuleSet::load(&settings, &env())
}

#[test]
fn easemob_actions_need_credentials_for_every_app_they_reach() {
    const CREDS: &str = "easemob:\n  \"org#app\": {api: 'https://a1.easemob.com', client_id: id, client_secret: '${S}'}\n";
    let rules = "actions:\n\
                 \x20 ban: {type: easemob, call: deactivate, user: '{{to_user}}'}\n\
                 \x20 other: {type: easemob, appkey: 'org#other', call: deactivate, user: '{{to_user}}'}\n\
                 rules:\n  - {name: bans, when: {event: roster:ban}, actions: [ban, other]}\n";
    let err = load_with_config(
        &format!("secrets: {{\"org#app\": x, \"org#two\": y}}\n{CREDS}"),
        rules,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("a.yaml: action ban: calls the event's app, and appkey \"org#two\" has no credentials under easemob:"),
        "{err}"
    );
    assert!(!err.contains("appkey \"org#app\" has no"), "{err}");
    assert!(
        err.contains(
            "a.yaml: action other: appkey: \"org#other\" has no credentials under easemob:"
        ),
        "{err}"
    );
    // Every app covered: valid, with a warning for the apps "*" lets in.
    let set = load_with_config(
        &format!("secrets: {{\"org#app\": x, \"*\": z}}\n{CREDS}"),
        "actions:\n  ban: {type: easemob, call: deactivate, user: '{{to_user}}'}\n\
         rules:\n  - {name: bans, when: {event: roster:ban}, actions: [ban]}\n",
    )
    .unwrap();
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("appkeys not listed in secrets")),
        "{:?}",
        set.warnings
    );
}

#[test]
fn a_rule_that_would_answer_its_own_messages_is_warned_about() {
    const CONFIG: &str = "secrets: {\"org#app\": x}\neasemob:\n  \"org#app\": {api: 'https://a1.easemob.com', client_id: id, client_secret: '${S}'}\n";
    let action = "actions:\n  reply: {type: easemob, call: send_message, from: bot, to: ['{{from_user}}'], text: 'got it'}\n";
    let loops = load_with_config(
        CONFIG,
        &format!("{action}rules:\n  - {{name: echo, when: {{event: chat}}, actions: [reply]}}\n"),
    )
    .unwrap();
    assert!(
        loops.warnings.iter().any(|w| w.contains(
            "rule echo: sends messages from \"bot\" (action reply) and matches the chat callbacks they come back as"
        )),
        "{:?}",
        loops.warnings
    );
    let guarded = load_with_config(
        CONFIG,
        &format!(
            "{action}rules:\n  - {{name: echo, when: {{event: chat}}, unless: {{from: bot}}, actions: [reply]}}\n  - {{name: bans, when: {{event: roster:ban}}, actions: [reply]}}\n"
        ),
    )
    .unwrap();
    assert!(
        !guarded.warnings.iter().any(|w| w.contains("come back as")),
        "{:?}",
        guarded.warnings
    );
}

#[test]
fn easemob_actions_say_what_each_call_needs_and_reads() {
    const CONFIG: &str = "secrets: {\"org#app\": x}\neasemob:\n  \"org#app\": {api: 'https://a1.easemob.com', client_id: id, client_secret: '${S}'}\n";
    let err = load_with_config(
        CONFIG,
        "actions:\n\
         \x20 a: {type: easemob, call: deactivate}\n\
         \x20 b: {type: easemob, call: block, user: x, text: hi}\n\
         \x20 c: {type: easemob, call: request, path: users}\n\
         \x20 d: {type: easemob, call: send_message}\n\
         \x20 e: {type: easemob, call: shout}\n",
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "a.yaml: action a: user: is required for call: deactivate",
        "a.yaml: action b: owner: is required for call: block",
        "a.yaml: action b: text: is not read by call: block",
        "a.yaml: action c: path: starts with / (it is under /{org}/{app})",
        "a.yaml: action d: to: send_message needs at least one recipient",
        "a.yaml: action d: text: is required for call: send_message",
        "a.yaml: action e: call: unknown variant `shout`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}
