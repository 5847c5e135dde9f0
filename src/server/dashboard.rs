//! `GET /`: one HTML page, rendered on the server: the cache, the builds' figures, the hit rate
//! per day, where executed time goes and why those steps ran, the latest builds and webhook
//! deliveries. One small script listens to `GET /events` and, when a build is recorded,
//! fetches the page again and swaps its content in place: no reload, no client-side
//! rendering to keep in step with this one. Without scripts the page refreshes every 30 s.

use std::fmt::Write as _;

use crate::cache_cmd::human_size;
use crate::server::builds::{BuildRecord, BuildStatus, Filter};
use crate::server::metrics::Outcome;
use crate::server::state::AppState;
use crate::server::store::Kind;

/// Builds the figures are computed over.
const WINDOW: usize = 500;
/// Builds listed.
const LISTED: usize = 30;
/// Builds the hit rate per day is computed over.
const HISTORY: usize = 5000;

/// `s` safe inside HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ms(v: Option<u64>) -> String {
    match v {
        None => "–".into(),
        Some(m) if m < 1000 => format!("{m} ms"),
        Some(m) if m < 60_000 => format!("{:.1} s", m as f64 / 1000.0),
        Some(m) => format!("{}m{:02}s", m / 60_000, (m % 60_000) / 1000),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |r| format!("{:.0} %", r * 100.0))
}

fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    hex.chars().take(12).collect()
}

/// The page (blocks: it reads the records).
pub fn render(state: &AppState) -> std::io::Result<String> {
    // The database aggregates; the hit rate over time looks further back than the other
    // figures, which are over the newest `WINDOW`. Only the listed records are read.
    let s = state.builds.stats(&Filter {
        last: Some(WINDOW),
        ..Filter::default()
    })?;
    let days = state.builds.days(&Filter {
        last: Some(HISTORY),
        ..Filter::default()
    })?;
    let recent = state.builds.query(&Filter {
        last: Some(LISTED),
        ..Filter::default()
    })?;
    let m = &state.metrics;
    let reads = |k: Kind| (m.count(k, Outcome::Hit), m.count(k, Outcome::Miss));
    let (ac_hit, ac_miss) = reads(Kind::Ac);
    let (cas_hit, cas_miss) = reads(Kind::Cas);
    let lookups = ac_hit + ac_miss;
    let lookup_rate = (lookups > 0).then(|| ac_hit as f64 / lookups as f64);

    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>MemoBuild server</title>\
         <noscript><meta http-equiv=\"refresh\" content=\"30\"></noscript>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin-bottom:2em}}td,th{{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}}\
         .ok{{color:#18794e}}.bad{{color:#c4320a}}.num{{text-align:right}}code{{font-size:90%}}\
         .cards div{{display:inline-block;margin:0 2em 1em 0}}.cards b{{display:block;font-size:1.6em}}\
         .why{{color:#555;font-size:90%}}#hit-rate rect{{fill:#3b82c4}}#hit-rate text{{font-size:10px;fill:#555}}</style>\
         </head><body><h1>MemoBuild server</h1><main id=\"live\">"
    );
    let _ = write!(
        h,
        "<h2>Builds (last {})</h2><div class=\"cards\">\
         <div><b>{}</b>builds</div><div><b>{}</b>failed</div>\
         <div><b>{}</b>vertex cache hit rate</div>\
         <div><b>{}</b>median build</div><div><b>{}</b>p95 build</div></div>",
        s.builds,
        s.builds,
        s.failed,
        pct(s.cache_hit_rate),
        ms(s.duration_ms.p50),
        ms(s.duration_ms.p95),
    );
    let _ = write!(
        h,
        "<h2>Cache</h2><div class=\"cards\"><div><b>{}</b>objects</div><div><b>{}</b>stored{}</div>\
         <div><b>{}</b>action lookups hit (since start)</div>\
         <div><b>{}/{}</b>blob reads hit/missed</div></div>",
        state.index.len(),
        human_size(state.index.total()),
        state
            .index
            .max_size()
            .map(|m| format!(" of {}", human_size(m)))
            .unwrap_or_default(),
        pct(lookup_rate),
        cas_hit,
        cas_miss,
    );

    if !s.projects.is_empty() {
        h.push_str(
            "<h2>Projects</h2><table><tr><th>project</th><th class=\"num\">builds</th>\
             <th class=\"num\">failed</th><th class=\"num\">mean</th><th class=\"num\">hit rate</th></tr>",
        );
        for p in &s.projects {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&p.project),
                p.builds,
                p.failed,
                ms(p.mean_duration_ms),
                pct(p.cache_hit_rate)
            );
        }
        h.push_str("</table>");
    }

    hit_rate_chart(&mut h, &days);

    if !s.slowest_steps.is_empty() {
        h.push_str(
            "<h2>Where executed time goes</h2><table id=\"slowest\"><tr><th>step</th>\
             <th class=\"num\">executed</th><th class=\"num\">cached</th><th class=\"num\">total</th>\
             <th class=\"num\">mean</th><th>why it ran</th></tr>",
        );
        for st in &s.slowest_steps {
            let why: Vec<String> = st
                .reasons
                .iter()
                .map(|r| format!("{} ({}×)", escape(&r.reason), r.count))
                .collect();
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"why\">{}</td></tr>",
                escape(&st.name),
                st.executed,
                st.cached,
                ms(Some(st.total_ms)),
                ms(Some(st.mean_ms)),
                why.join("<br>")
            );
        }
        h.push_str("</table>");
    }

    h.push_str(
        "<h2>Latest builds</h2><table id=\"latest\"><tr><th>started</th><th>project</th><th>target</th>\
         <th>status</th><th class=\"num\">time</th><th class=\"num\">executed</th>\
         <th class=\"num\">cached</th><th>image</th><th>host</th></tr>",
    );
    if recent.is_empty() {
        h.push_str("<tr><td colspan=\"9\">No builds reported yet: builds report here when run with <code>--remote-cache</code> pointing at this server.</td></tr>");
    }
    for r in recent.iter().take(LISTED) {
        build_row(&mut h, r);
    }
    h.push_str("</table>");

    let deliveries = state.webhooks.recent(10);
    if state.webhooks.enabled() || !deliveries.is_empty() {
        h.push_str(
            "<h2>Webhook deliveries</h2><table><tr><th>created</th><th>event</th><th>url</th>\
             <th>state</th><th class=\"num\">attempts</th><th>last result</th></tr>",
        );
        for d in &deliveries {
            let state_text = serde_json::to_value(d.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let last = match (&d.last_status, &d.last_error) {
                (_, Some(e)) => e.clone(),
                (Some(s), None) => format!("HTTP {s}"),
                (None, None) => String::new(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                escape(&d.created_at),
                escape(&d.event),
                escape(&origin(&d.url)),
                escape(&state_text),
                d.attempts,
                escape(&last)
            );
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<p>JSON: <a href=\"/api/builds\">/api/builds</a> · <a href=\"/api/stats\">/api/stats</a> · \
         <a href=\"/api/webhooks/deliveries\">/api/webhooks/deliveries</a> · <a href=\"/metrics\">/metrics</a></p>\
         </main>",
    );
    h.push_str(LIVE_SCRIPT);
    h.push_str("</body></html>\n");
    Ok(h)
}

/// Listens to `/events`; on a recorded build, fetches the page and swaps `#live` in place (one
/// fetch at a time, another after it if builds came meanwhile).
const LIVE_SCRIPT: &str = "<script>(function(){\
if(!window.EventSource||!window.fetch)return;\
var busy=false,again=false;\
function refresh(){if(busy){again=true;return;}busy=true;\
fetch(location.pathname,{credentials:'same-origin'})\
.then(function(r){return r.ok?r.text():Promise.reject(r.status);})\
.then(function(html){var fresh=new DOMParser().parseFromString(html,'text/html').getElementById('live');\
var cur=document.getElementById('live');if(fresh&&cur)cur.replaceWith(fresh);})\
.catch(function(){}).finally(function(){busy=false;if(again){again=false;refresh();}});}\
var es=new EventSource('/events');es.addEventListener('build',refresh);es.addEventListener('lagged',refresh);\
})();</script>";

/// Days shown in the hit-rate chart (the newest).
const DAYS: usize = 30;

/// The hit rate per day as an SVG bar chart, each bar labelled for screen readers and tooltips.
fn hit_rate_chart(h: &mut String, days: &[crate::server::builds::DayStats]) {
    let days = &days[days.len().saturating_sub(DAYS)..];
    if days.is_empty() {
        return;
    }
    let (bar, gap, height) = (18, 4, 100);
    // Wide enough for the first and last day's labels even with a few bars.
    let width = (days.len() * (bar + gap)).max(200);
    let _ = write!(
        h,
        "<h2>Cache hit rate per day</h2><svg id=\"hit-rate\" role=\"img\" width=\"{width}\" height=\"{}\" \
         aria-label=\"share of steps restored from the cache, per day\">",
        height + 16
    );
    for (i, d) in days.iter().enumerate() {
        let rate = d.cache_hit_rate.unwrap_or(0.0);
        let bar_h = ((rate * height as f64).round() as usize).max(1);
        let label = format!(
            "{}: {} of steps cached ({} builds)",
            d.day,
            pct(d.cache_hit_rate),
            d.builds
        );
        let _ = write!(
            h,
            "<rect x=\"{}\" y=\"{}\" width=\"{bar}\" height=\"{bar_h}\" aria-label=\"{}\"><title>{}</title></rect>",
            i * (bar + gap),
            height - bar_h,
            escape(&label),
            escape(&label)
        );
    }
    let first = days.first().map(|d| d.day.as_str()).unwrap_or_default();
    let last = days.last().map(|d| d.day.as_str()).unwrap_or_default();
    let _ = write!(
        h,
        "<text x=\"0\" y=\"{}\">{}</text><text x=\"{width}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>",
        height + 12,
        escape(first),
        height + 12,
        escape(last)
    );
}

/// `scheme://host[:port]` of a URL: paths of hook URLs can be secrets, and the dashboard is
/// open to whoever may read the cache.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

fn build_row(h: &mut String, r: &BuildRecord) {
    let (class, status) = match r.status {
        BuildStatus::Succeeded => ("ok", "succeeded".to_owned()),
        BuildStatus::Failed => ("bad", "failed".to_owned()),
    };
    let title = r.error.as_deref().map(escape).unwrap_or_default();
    let _ = write!(
        h,
        "<tr><td>{}</td><td><a href=\"/api/builds/{}\">{}</a></td><td>{}</td>\
         <td class=\"{class}\" title=\"{title}\">{status}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td><code>{}</code></td><td>{}</td></tr>",
        escape(&r.started_at),
        escape(&r.id),
        escape(if r.project.is_empty() {
            "(unnamed)"
        } else {
            &r.project
        }),
        escape(r.target.as_deref().unwrap_or("")),
        ms(Some(r.duration_ms)),
        r.executed(),
        r.cached(),
        escape(&r.image.as_deref().map(short_digest).unwrap_or_default()),
        escape(&r.host),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(ms(Some(250)), "250 ms");
        assert_eq!(ms(Some(1500)), "1.5 s");
        assert_eq!(ms(Some(125_000)), "2m05s");
        assert_eq!(pct(Some(0.5)), "50 %");
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(
            origin("https://hooks.example.com/services/T000/B000/XXXX"),
            "https://hooks.example.com"
        );
    }
}
