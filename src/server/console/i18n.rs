//! The console's words, in English and in Chinese.
//!
//! Every string is a field of [`Words`], and each language is one value of
//! it, so a string missing in either language does not compile.

/// A language the console speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    /// `en` or `zh`, as the `lang` parameter and cookie spell it.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// The `lang` attribute of the page.
    pub fn html(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The first language of an `Accept-Language` header the console
    /// speaks (`zh-CN`, `zh-Hans`, `zh` are Chinese), by the header's
    /// order of preference; English when none.
    pub fn from_accept(header: &str) -> Self {
        accept_language::parse(header)
            .iter()
            .find_map(|tag| {
                let primary = tag.split(['-', '_']).next().unwrap_or("");
                Lang::parse(&primary.to_ascii_lowercase())
            })
            .unwrap_or(Lang::En)
    }

    pub fn words(self) -> &'static Words {
        match self {
            Lang::En => &EN,
            Lang::Zh => &ZH,
        }
    }
}

/// Every string the console shows.
pub struct Words {
    pub console: &'static str,
    pub overview: &'static str,
    pub events: &'static str,
    pub deliveries: &'static str,
    pub rules: &'static str,
    pub sign_out: &'static str,
    pub language: &'static str,

    pub queue_depth: &'static str,
    pub dead: &'static str,
    pub digests_open: &'static str,
    pub callbacks_since_start: &'static str,
    pub store: &'static str,
    pub writable: &'static str,
    pub not_writable: &'static str,
    pub version: &'static str,
    pub uptime: &'static str,
    pub chart_callbacks: &'static str,
    pub chart_deliveries: &'static str,
    pub chart_note: &'static str,
    pub hour_ago: &'static str,
    pub now: &'static str,
    pub peak: &'static str,
    pub last_reload: &'static str,
    pub reload_ok: &'static str,
    pub reload_failed: &'static str,
    pub replicas: &'static str,
    pub replica: &'static str,
    pub host: &'static str,
    pub started: &'static str,
    pub last_seen: &'static str,

    pub event: &'static str,
    pub user: &'static str,
    pub rule: &'static str,
    pub since: &'static str,
    pub until: &'static str,
    pub filter: &'static str,
    pub clear: &'static str,
    pub received: &'static str,
    pub from_to: &'static str,
    pub matched_rules: &'static str,
    pub no_events: &'static str,
    pub older: &'static str,
    pub newest: &'static str,
    pub event_hint: &'static str,
    pub time_hint: &'static str,
    pub callback_as_received: &'static str,
    pub none: &'static str,
    pub id: &'static str,

    pub status: &'static str,
    pub any: &'static str,
    pub pending: &'static str,
    pub sent: &'static str,
    pub action: &'static str,
    pub attempts: &'static str,
    pub last_error: &'static str,
    pub created: &'static str,
    pub retry: &'static str,
    pub retry_all_dead: &'static str,
    pub no_deliveries: &'static str,
    /// `{n}` is the number put back.
    pub requeued: &'static str,
    pub not_dead: &'static str,

    pub delivery: &'static str,
    pub attempt_timeline: &'static str,
    pub started_at: &'static str,
    pub duration: &'static str,
    pub outcome: &'static str,
    pub code: &'static str,
    pub error: &'static str,
    pub no_attempts: &'static str,
    pub next_attempt: &'static str,
    pub outcome_retry: &'static str,
    /// The chart's key: attempts that failed.
    pub failed: &'static str,

    pub file: &'static str,
    pub kind: &'static str,
    pub kind_each: &'static str,
    pub kind_digest: &'static str,
    pub kind_threshold: &'static str,
    pub matches: &'static str,
    pub disabled: &'static str,
    pub open_groups: &'static str,
    pub no_open_groups: &'static str,
    pub group: &'static str,
    pub count: &'static str,
    pub due: &'static str,
    pub cooldown_until: &'static str,
    pub stops: &'static str,

    pub sign_in: &'static str,
    pub admin_token: &'static str,
    pub sign_in_hint: &'static str,
    pub wrong_token: &'static str,

    pub not_found: &'static str,
    pub not_found_text: &'static str,
    pub bad_filter: &'static str,
    pub refused: &'static str,
    pub refused_text: &'static str,
    pub store_unavailable: &'static str,

    pub moderation: &'static str,
    pub moderation_off: &'static str,
    pub chart_verdicts: &'static str,
    pub verdicts_note: &'static str,
    pub rejected: &'static str,
    pub rewritten: &'static str,
    pub passed: &'static str,
    pub by_rule: &'static str,
    pub latest_verdicts: &'static str,
    pub verdict: &'static str,
    pub answer_code: &'static str,
    pub original_text: &'static str,
    pub rewritten_text: &'static str,
    pub no_verdicts: &'static str,
    pub requests_last_hour: &'static str,

    pub bad_limit: &'static str,
    pub bad_since: &'static str,
    pub bad_until: &'static str,
    pub bad_before: &'static str,
    pub bad_status: &'static str,
    pub bad_delivery_before: &'static str,
}

pub static EN: Words = Words {
    console: "easehook console",
    overview: "Overview",
    events: "Events",
    deliveries: "Deliveries",
    rules: "Rules",
    sign_out: "Sign out",
    language: "Language",

    queue_depth: "Queue depth",
    dead: "Dead",
    digests_open: "Open digests",
    callbacks_since_start: "Callbacks since start",
    store: "Store",
    writable: "writable",
    not_writable: "not writable",
    version: "Version",
    uptime: "Up for",
    chart_callbacks: "Callbacks per minute, last hour",
    chart_deliveries: "Delivery attempts per minute, last hour",
    chart_note: "Counted by this daemon since it started.",
    hour_ago: "60 min ago",
    now: "now",
    peak: "peak",
    last_reload: "Last reload",
    reload_ok: "loaded",
    reload_failed: "refused; the rules before it stay in force",
    replicas: "Replicas",
    replica: "Replica",
    host: "Host",
    started: "Started",
    last_seen: "Last seen",

    event: "Event",
    user: "User",
    rule: "Rule",
    since: "Since",
    until: "Until",
    filter: "Filter",
    clear: "Clear",
    received: "Received",
    from_to: "From → to",
    matched_rules: "Rules",
    no_events: "No event matches.",
    older: "Older →",
    newest: "← Newest",
    event_hint: "roster:ban or roster",
    time_hint: "1h, 2026-12-01T08:00:00+08:00 or ms",
    callback_as_received: "The callback as received (its signature left out)",
    none: "none",
    id: "Id",

    status: "Status",
    any: "any",
    pending: "pending",
    sent: "sent",
    action: "Action",
    attempts: "Attempts",
    last_error: "Last error",
    created: "Created",
    retry: "Retry",
    retry_all_dead: "Retry all dead",
    no_deliveries: "No delivery matches.",
    requeued: "{n} put back in the queue.",
    not_dead: "That delivery is not dead: nothing was put back.",

    delivery: "Delivery",
    attempt_timeline: "Attempts",
    started_at: "Started",
    duration: "Duration",
    outcome: "Outcome",
    code: "HTTP status / SMTP reply",
    error: "Error",
    no_attempts: "No attempt made yet.",
    next_attempt: "Next attempt",
    outcome_retry: "failed, retried",
    failed: "failed (to be retried, or dead)",

    file: "File",
    kind: "Kind",
    kind_each: "each event",
    kind_digest: "digest",
    kind_threshold: "threshold",
    matches: "Matches since start",
    disabled: "disabled",
    open_groups: "Open digests and thresholds",
    no_open_groups: "No digest is open and no threshold is counting.",
    group: "Group",
    count: "Count",
    due: "Delivered at",
    cooldown_until: "Resting until",
    stops: "stops",

    sign_in: "Sign in",
    admin_token: "Admin token",
    sign_in_hint: "This console needs the admin token (admin_token in easehook.yaml).",
    wrong_token: "Wrong token.",

    not_found: "Not found",
    not_found_text: "There is no such page, event or delivery. Events and sent deliveries are kept for the retention period only.",
    bad_filter: "This filter is not valid",
    refused: "Refused",
    refused_text: "This request did not come from a page of this console, or its form has expired. Go back, reload the page and try again.",
    store_unavailable: "The store is unavailable",

    moderation: "Moderation",
    moderation_off: "The pre-send endpoint is off: the configuration has no presend: section.",
    chart_verdicts: "Rejects and rewrites per minute",
    verdicts_note: "counted by this daemon over the last hour",
    rejected: "rejected",
    rewritten: "rewritten",
    passed: "passed",
    by_rule: "By rule",
    latest_verdicts: "Latest rejects and rewrites",
    verdict: "Verdict",
    answer_code: "Code",
    original_text: "Text, hits marked",
    rewritten_text: "Rewritten",
    no_verdicts: "No reject or rewrite is recorded.",
    requests_last_hour: "Requests in the last hour",

    bad_limit: "limit must be a number from 1 to 1000",
    bad_since: "since must be a duration like 1h, an RFC 3339 time or a time in ms",
    bad_until: "until must be a duration like 1h, an RFC 3339 time or a time in ms",
    bad_before: "before must be the next of the page before",
    bad_status: "status must be pending, sent or dead",
    bad_delivery_before: "before must be a delivery id",
};

pub static ZH: Words = Words {
    console: "easehook 控制台",
    overview: "概览",
    events: "事件",
    deliveries: "投递",
    rules: "规则",
    sign_out: "退出",
    language: "语言",

    queue_depth: "队列深度",
    dead: "死信",
    digests_open: "进行中的汇总",
    callbacks_since_start: "启动以来的回调",
    store: "存储",
    writable: "可写",
    not_writable: "不可写",
    version: "版本",
    uptime: "已运行",
    chart_callbacks: "每分钟回调数（最近一小时）",
    chart_deliveries: "每分钟投递尝试数（最近一小时）",
    chart_note: "由本进程自启动以来统计。",
    hour_ago: "60 分钟前",
    now: "现在",
    peak: "峰值",
    last_reload: "上次重新加载",
    reload_ok: "已加载",
    reload_failed: "被拒绝；之前的规则继续生效",
    replicas: "副本",
    replica: "副本",
    host: "主机",
    started: "启动于",
    last_seen: "最后心跳",

    event: "事件",
    user: "用户",
    rule: "规则",
    since: "起始",
    until: "截止",
    filter: "筛选",
    clear: "清除",
    received: "接收时间",
    from_to: "发起方 → 接收方",
    matched_rules: "规则",
    no_events: "没有符合条件的事件。",
    older: "更早 →",
    newest: "← 最新",
    event_hint: "roster:ban 或 roster",
    time_hint: "1h、2026-12-01T08:00:00+08:00 或毫秒",
    callback_as_received: "收到的回调原文（已略去签名）",
    none: "无",
    id: "编号",

    status: "状态",
    any: "全部",
    pending: "待发送",
    sent: "已发送",
    action: "动作",
    attempts: "尝试次数",
    last_error: "最近错误",
    created: "创建时间",
    retry: "重试",
    retry_all_dead: "重试全部死信",
    no_deliveries: "没有符合条件的投递。",
    requeued: "已将 {n} 条放回队列。",
    not_dead: "该投递不是死信，未作改动。",

    delivery: "投递",
    attempt_timeline: "尝试记录",
    started_at: "开始时间",
    duration: "耗时",
    outcome: "结果",
    code: "HTTP 状态码 / SMTP 应答码",
    error: "错误",
    no_attempts: "尚未尝试。",
    next_attempt: "下次尝试",
    outcome_retry: "失败，将重试",
    failed: "失败（将重试或已成死信）",

    file: "文件",
    kind: "类型",
    kind_each: "逐条",
    kind_digest: "汇总",
    kind_threshold: "阈值",
    matches: "启动以来匹配次数",
    disabled: "已停用",
    open_groups: "进行中的汇总与阈值",
    no_open_groups: "当前没有进行中的汇总或计数中的阈值。",
    group: "分组",
    count: "数量",
    due: "投递时间",
    cooldown_until: "冷却至",
    stops: "停止后续规则",

    sign_in: "登录",
    admin_token: "管理令牌",
    sign_in_hint: "此控制台需要管理令牌（easehook.yaml 中的 admin_token）。",
    wrong_token: "令牌错误。",

    not_found: "未找到",
    not_found_text: "没有这个页面、事件或投递。事件和已发送的投递只保留到保留期结束。",
    bad_filter: "筛选条件无效",
    refused: "已拒绝",
    refused_text: "此请求并非来自本控制台的页面，或表单已过期。请返回、刷新页面后重试。",
    store_unavailable: "存储不可用",

    moderation: "审核",
    moderation_off: "发送前回调未开启：配置中没有 presend: 段。",
    chart_verdicts: "每分钟拦截与改写",
    verdicts_note: "本守护进程最近一小时的计数",
    rejected: "拦截",
    rewritten: "改写",
    passed: "放行",
    by_rule: "按规则",
    latest_verdicts: "最近的拦截与改写",
    verdict: "结果",
    answer_code: "代码",
    original_text: "原文（命中处标出）",
    rewritten_text: "改写后",
    no_verdicts: "还没有记录到拦截或改写。",
    requests_last_hour: "最近一小时请求数",

    bad_limit: "limit 必须是 1 到 1000 之间的数字",
    bad_since: "since 必须是时长（如 1h）、RFC 3339 时间或毫秒数",
    bad_until: "until 必须是时长（如 1h）、RFC 3339 时间或毫秒数",
    bad_before: "before 必须是上一页给出的 next",
    bad_status: "status 必须是 pending、sent 或 dead",
    bad_delivery_before: "before 必须是投递编号",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_language_picks_chinese_or_english() {
        assert_eq!(Lang::from_accept("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept("en-US,en;q=0.9,zh-CN;q=0.8"), Lang::En);
        assert_eq!(
            Lang::from_accept("fr-FR, zh-Hans;q=0.5, en;q=0.3"),
            Lang::Zh
        );
        assert_eq!(Lang::from_accept("de"), Lang::En);
        assert_eq!(Lang::from_accept(""), Lang::En);
    }
}
