use super::*;
use serde_json::json;

fn sample() -> Callback {
    Callback::from_value(json!({
        "chat_type": "roster", "callId": "org#app_1", "security": "x",
        "payload": {"operation": "add", "reason": "hi {{from}} \"<b>&</b>\"\n你好"},
        "appkey": "org#app", "from": "org#app_alice@easemob.com", "to": "bob",
        "eventType": "chat", "msg_id": "1", "timestamp": 1642648046912u64
    }))
    .unwrap()
}

/// The render data of a delivery of `cb` by rule `r1` and action `a1`.
fn data(cb: &Callback, reads: Reads) -> Data<'_> {
    let received = Utc.timestamp_millis_opt(1642648047000).unwrap();
    Data::new(cb, received, reads, "r1", "a1")
}

/// Templates with one file template, `footer.hbs`, to use as a partial.
fn with_footer() -> Templates {
    let mut t = Templates::new(chrono_tz::Tz::Asia__Shanghai);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("footer.hbs"), "-- {{rule}}").unwrap();
    t.load_dir(dir.path(), &mut Diagnostics::new());
    t
}

fn render(escape: Escape, src: &str) -> Result<String, String> {
    let mut t = Templates::new(chrono_tz::Tz::Asia__Shanghai);
    let r = t.register_inline("t#x", escape, src)?;
    t.render(&r, &data(&sample(), Reads::All))
}

#[test]
fn context_has_every_documented_name() {
    let out = render(
            Escape::Plain,
            "{{event}}|{{operation}}|{{chat_type}}|{{eventType}}|{{appkey}}|{{host}}|{{callId}}|{{msg_id}}|{{from}}|{{to}}|{{from_user}}|{{to_user}}|{{timestamp}}|{{time}}|{{payload.operation}}|{{callback.msg_id}}|{{rule}}|{{action}}|{{received_at}}",
        )
        .unwrap();
    assert_eq!(
        out,
        "roster:add|add|roster|chat|org#app||org#app_1|1|org#app_alice@easemob.com|bob|alice|bob|1642648046912|2022-01-20T03:07:26.912Z|add|1|r1|a1|2022-01-20T03:07:27.000Z"
    );
}

/// A template that may read `payload` or `callback` is told apart from
/// one that provably does not; and the second renders the same from
/// the context without them.
#[test]
fn templates_that_may_read_the_callback_are_known() {
    let may = [
        "{{payload.reason}}",
        "{{callback.msg_id}}",
        "{{payload}}",
        "{{{callback}}}",
        "{{lookup payload \"reason\"}}",
        "{{#each payload as |v k|}}{{k}}={{v}}{{/each}}",
        "{{this.payload.reason}}",
        "{{[payload].reason}}",
        "{{default payload.reason \"-\"}}",
        "{{datetime timestamp tz=payload.tz}}",
        "{{upper (lower payload.reason)}}",
        "{{#with payload}}{{reason}}{{/with}}",
        "{{#if event}}{{else}}{{../payload.reason}}{{/if}}",
        "{{#if event}}{{payload.reason}}{{/if}}",
        "{{#if event}}x{{else}}{{callback.host}}{{/if}}",
        "{{#each callback}}{{@key}}{{/each}}",
        "{{json this}}",
        "{{lookup this \"payload\"}}",
        "{{@root.payload.reason}}",
        "{{> footer.hbs}}",
    ];
    let lean = [
        "plain text",
        "{{event}} {{from_user}} -> {{to_user}} at {{time}}",
        "{{datetime timestamp format=\"%H:%M\" tz=\"UTC\"}} {{rule}}/{{action}}",
        "{{upper (truncate from_user 3)}} {{default host \"none\"}}",
        "{{#if chat_type}}{{eventType}}{{else}}{{appkey}}{{/if}}",
        "{{! payload is only named in a comment }}{{msg_id}}",
        "{{json \"payload\"}}",
    ];
    let mut t = with_footer();
    let cb = Callback::from_value(json!({
        "chat_type": "roster", "callId": "org#app_1", "security": "x",
        "payload": {"operation": "add", "reason": "hi", "tz": "UTC"},
        "appkey": "org#app", "from": "org#app_alice@easemob.com", "to": "bob",
        "eventType": "chat", "msg_id": "1", "timestamp": 1642648046912u64
    }))
    .unwrap();
    let received = Utc.timestamp_millis_opt(1642648047000).unwrap();
    let (full, without) = (data(&cb, Reads::All), data(&cb, Reads::NotCallback));
    for (i, src) in may.iter().chain(&lean).enumerate() {
        let r = t
            .register_inline(&format!("t#{i}"), Escape::Plain, src)
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(t.reads_callback(&r), i < may.len(), "{src}");
        if i >= may.len() {
            let [lean, whole] = [&without, &full].map(|d| t.by_handlebars(&r, d.context()));
            assert_eq!(lean, whole, "{src}");
            assert!(whole.is_ok(), "{src}");
        }
    }
    // The lean context lacks exactly the two.
    let names = |v: Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let mut gone = names(context(&cb, received, Reads::All));
    gone.retain(|k| !names(context(&cb, received, Reads::NotCallback)).contains(k));
    assert_eq!(gone, ["payload", "callback"]);
}

/// A template of text and plain names renders without Handlebars, to
/// the text Handlebars gives, in every escaping mode; anything else, and
/// any value the plan does not render, is left to Handlebars.
#[test]
fn plain_templates_render_as_handlebars_does() {
    let plain = [
        "{{event}}",
        "a {{from_user}} & {{{to_user}}} <b>",
        "{{timestamp}}{{time}} {{received_at}}",
        "x {{! a comment }} y",
        "line\n  {{! standalone }}\n{{~ rule ~}}  \n end",
        "{{ action }}|{{callId}}|{{host}}|{{msg_id}}|{{from}}/{{to}}",
        "{{operation}} {{chat_type}} {{eventType}} {{appkey}}",
        "{{[from]}}",
        "no braces at all",
        "",
    ];
    let other = [
        "{{upper event}}",
        "{{payload.reason}}",
        "{{event.x}}",
        "{{#if event}}x{{/if}}",
        "{{> footer.hbs}}",
        "{{this}}",
        "{{@root.event}}",
        "{{log}}",
        "{{nothing}}",
    ];
    let mut t = with_footer();
    // Values with every character some escaping changes.
    let odd = "<a href=\"x\">&'#@:/?%20 {{x}}\n你好";
    let cb = Callback::from_value(json!({
        "chat_type": "roster", "callId": format!("org#app_{odd}"), "security": "x",
        "payload": {"operation": format!("add{odd}")},
        "appkey": format!("org#app{odd}"), "host": odd, "from": format!("org#app_{odd}@x"),
        "to": odd, "eventType": odd, "msg_id": odd, "timestamp": 1642648046912u64
    }))
    .unwrap();
    let mut received = Utc.timestamp_millis_opt(1642648047000).unwrap();
    for escape in Escape::ALL {
        for (i, src) in plain.iter().chain(&other).enumerate() {
            let r = t
                .register_inline(&format!("t#{i}"), escape, src)
                .unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(r.plan.is_some(), i < plain.len(), "{src}");
            let d = Data::new(&cb, received, Reads::All, odd, "a&<b>");
            assert_eq!(
                t.render(&r, &d),
                t.by_handlebars(&r, d.context()),
                "{escape:?} {src}"
            );
            received += chrono::Duration::milliseconds(1);
        }
    }
    // Rendered into a buffer, the text comes after what it holds. With
    // data whose values a plan cannot read, what the plan wrote before
    // finding that out gives way to Handlebars' text.
    let r = t
        .register_inline("t#a", Escape::Plain, "a{{event}}b")
        .unwrap();
    let mut out = String::from("before|");
    t.render_into(&r, &data(&cb, Reads::All), &mut out).unwrap();
    assert_eq!(out, format!("before|a{}b", cb.event));
    let ctx = Data::from_context(TemplateData::from(json!({"event": "E"})));
    let mut out = String::from("before|");
    t.render_into(&r, &ctx, &mut out).unwrap();
    assert_eq!(out, "before|aEb");
    // The plan is what renders: with the registry's template replaced,
    // a reference made before still renders the text it planned; and
    // the context was never built.
    let r = t
        .register_inline("t#p", Escape::Plain, "{{event}}!")
        .unwrap();
    t.register_inline("t#p", Escape::Plain, "changed").unwrap();
    let d = data(&cb, Reads::All);
    assert_eq!(
        t.render(&r, &d).unwrap(),
        "roster:add<a href=\"x\">&'#@:/?%20 {{x}}\n你好!"
    );
    assert!(d.context.get().is_none());
    assert_eq!(t.by_handlebars(&r, d.context()).unwrap(), "changed");
}

#[test]
fn user_text_is_data_never_a_template() {
    assert_eq!(
        render(Escape::Plain, "{{payload.reason}}").unwrap(),
        "hi {{from}} \"<b>&</b>\"\n你好"
    );
}

#[test]
fn escaping_by_destination() {
    assert_eq!(
        render(Escape::Html, "<p>{{payload.reason}}</p>").unwrap(),
        "<p>hi {{from}} &quot;&lt;b&gt;&amp;&lt;/b&gt;&quot;\n你好</p>"
    );
    assert_eq!(
        render(Escape::Url, "https://x.example/a/{{event}}?u={{from}}").unwrap(),
        "https://x.example/a/roster%3Aadd?u=org%23app_alice%40easemob.com"
    );
    assert_eq!(
        render(Escape::Slack, "*{{payload.reason}}*").unwrap(),
        "*hi {{from}} \"&lt;b&gt;&amp;&lt;/b&gt;\"\n你好*"
    );
    // Triple-stash opts out of escaping, as in every Handlebars.
    assert_eq!(
        render(Escape::Html, "{{{from_user}}}<br>").unwrap(),
        "alice<br>"
    );
}

#[test]
fn strict_mode_reports_the_missing_name() {
    let err = render(Escape::Plain, "{{payload.status.error_code}}").unwrap_err();
    assert!(err.contains("payload.status.error_code"), "{err}");
    assert!(render(Escape::Plain, "{{upper nothing}}").is_err());
}

#[test]
fn helpers() {
    assert_eq!(
        render(Escape::Plain, "{{datetime timestamp}}").unwrap(),
        "2022-01-20 11:07:26"
    );
    assert_eq!(
        render(
            Escape::Plain,
            "{{datetime timestamp tz=\"UTC\" format=\"%H:%M\"}}"
        )
        .unwrap(),
        "03:07"
    );
    assert_eq!(
        render(Escape::Plain, "{{datetime received_at format=\"%Y\"}}").unwrap(),
        "2022"
    );
    assert_eq!(
        render(Escape::Plain, "{{datetime \"1642648046912\" tz=\"UTC\"}}").unwrap(),
        "2022-01-20 03:07:26"
    );
    assert!(render(Escape::Plain, "{{datetime timestamp tz=\"Nowhere\"}}").is_err());
    assert!(render(Escape::Plain, "{{datetime timestamp format=\"%Q\"}}").is_err());
    assert!(render(Escape::Plain, "{{datetime from_user}}").is_err());
    assert_eq!(
        render(Escape::Plain, "{{json payload.operation}}").unwrap(),
        "\"add\""
    );
    assert_eq!(
        render(Escape::Html, "{{json payload.operation}}").unwrap(),
        "&quot;add&quot;"
    );
    assert_eq!(
        render(Escape::Plain, "{{default payload.missing \"none\"}}").unwrap(),
        "none"
    );
    assert_eq!(
        render(Escape::Plain, "{{default host \"none\"}}").unwrap(),
        "none"
    );
    assert_eq!(
        render(Escape::Plain, "{{default from_user \"none\"}}").unwrap(),
        "alice"
    );
    assert_eq!(
        render(Escape::Plain, "{{upper from_user}} {{lower \"AB\"}}").unwrap(),
        "ALICE ab"
    );
    assert_eq!(
        render(Escape::Plain, "{{truncate payload.reason 4}}").unwrap(),
        "hi …"
    );
    assert_eq!(
        render(Escape::Plain, "{{truncate \"你好世界\" 4}}").unwrap(),
        "你好世界"
    );
    assert_eq!(
        render(Escape::Plain, "{{truncate \"你好世界\" 3}}").unwrap(),
        "你好…"
    );
    assert!(render(Escape::Plain, "{{truncate from_user \"x\"}}").is_err());
}

#[test]
fn file_templates_load_and_work_as_partials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("footer.hbs"), "-- {{rule}}").unwrap();
    std::fs::write(dir.path().join("broken.hbs"), "{{#if}}").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let mut t = Templates::new(chrono_tz::Tz::UTC);
    let mut diags = Diagnostics::new();
    t.load_dir(dir.path(), &mut diags);
    assert_eq!(t.files(), ["footer.hbs"]);
    assert_eq!(diags.len(), 1, "{diags}");
    assert!(diags.to_string().contains("broken.hbs"), "{diags}");
    let r = t
        .register_inline("a#text", Escape::Plain, "hello {{> footer.hbs}}")
        .unwrap();
    assert_eq!(
        t.render(&r, &data(&sample(), Reads::All)).unwrap(),
        "hello -- r1"
    );
}
