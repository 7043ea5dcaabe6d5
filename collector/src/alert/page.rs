//! The alert page at `/alerts`: every alert on the board and every alert
//! seen in the recent history, each in a section anchored at its
//! fingerprint, with its labels, annotations and timeline. It is what an
//! alert's `generatorURL` (`<external-url>/alerts#<fingerprint>`) opens
//! from Alertmanager or a webhook receiver, so on-call lands on the
//! collector's own account of the alert rather than on a bare query.
//!
//! Server-rendered HTML without JavaScript, like the status page at `/`
//! (whose escaping it shares); [`render`] is pure and tested with literal
//! data, the handler in `alert/api.rs` only gathers it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::webhook::format_rfc3339;
use super::{Alert, AlertEvent, AlertState, fingerprint_of};
use crate::model::Labels;
use crate::web::escape;

/// How far back the page reads history.
pub const PAGE_HISTORY_MS: i64 = 7 * 24 * 3_600_000;
/// Most history events the page reads.
pub const PAGE_HISTORY_LIMIT: usize = 5_000;

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
section{border-top:1px solid #ccc;padding:.5em 0}\
section:target{background:#fff6d5}\
.firing{color:#b00;font-weight:bold}.pending{color:#a60}.resolved{color:#070}\
.sub{color:#666;font-size:90%}code{font-size:90%}";

/// One alert's section: its current state when on the board, and its
/// transitions from the history, oldest first.
struct Section<'a> {
    labels: &'a Labels,
    current: Option<&'a Alert>,
    events: Vec<&'a AlertEvent>,
}

/// The page for the board's `alerts` and the history `events` (oldest
/// first), rendered at `now_ms`. Board alerts come first (firing, pending,
/// resolved), then alerts known only from the history, newest first.
pub fn render(alerts: &[Alert], events: &[AlertEvent], now_ms: i64) -> String {
    let mut sections: BTreeMap<String, Section<'_>> = BTreeMap::new();
    for a in alerts {
        sections.insert(
            a.fingerprint(),
            Section {
                labels: &a.labels,
                current: Some(a),
                events: Vec::new(),
            },
        );
    }
    for e in events {
        sections
            .entry(fingerprint_of(&e.labels))
            .or_insert_with(|| Section {
                labels: &e.labels,
                current: None,
                events: Vec::new(),
            })
            .events
            .push(e);
    }
    let rank = |s: &Section<'_>| match s.current.map(|a| a.state) {
        Some(AlertState::Firing) => 0,
        Some(AlertState::Pending) => 1,
        Some(AlertState::Resolved) => 2,
        None => 3,
    };
    let last_at = |s: &Section<'_>| s.events.last().map_or(i64::MIN, |e| e.at_ms);
    let mut order: Vec<(&String, &Section<'_>)> = sections.iter().collect();
    order.sort_by(|(fa, a), (fb, b)| rank(a).cmp(&rank(b)).then(last_at(b).cmp(&last_at(a))).then(fa.cmp(fb)));

    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>hostpulse alerts</title><style>{STYLE}</style></head><body>\n\
         <h1>Alerts</h1>\n<p class=\"sub\">as of {} · <a href=\"/\">status</a> · \
         <a href=\"/api/v1/alerts\">/api/v1/alerts</a> · \
         <a href=\"/api/v1/alerts/history\">/api/v1/alerts/history</a></p>\n",
        escape(&format_rfc3339(now_ms)),
    );
    if order.is_empty() {
        h.push_str("<p class=\"sub\">No alerts on the board and none in the last 7 days.</p>\n");
    }
    for (fp, s) in order {
        let name = s.labels.get(super::ALERT_NAME);
        let _ = write!(h, "<section id=\"{}\">\n<h2>{}", escape(fp), escape(name));
        match s.current {
            Some(a) => {
                let state = a.state.as_str();
                let _ = write!(
                    h,
                    " <span class=\"{state}\">{state}</span></h2>\n<p class=\"sub\">active since {} · value {}",
                    escape(&format_rfc3339(a.active_since_ms)),
                    escape(&crate::detect::template::format_value(a.value)),
                );
                if let Some(at) = a.resolved_at_ms {
                    let _ = write!(h, " · resolved {}", escape(&format_rfc3339(at)));
                }
                h.push_str("</p>\n");
            }
            None => h.push_str(" <span class=\"sub\">(no longer on the board)</span></h2>\n"),
        }
        let _ = writeln!(
            h,
            "<p><code>{}</code> <span class=\"sub\">fingerprint {}</span></p>",
            escape(&s.labels.to_string()),
            escape(fp)
        );
        if let Some(a) = s.current {
            h.push_str("<dl>\n");
            for (k, v) in &a.annotations {
                let _ = writeln!(h, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
            }
            h.push_str("</dl>\n");
        }
        if !s.events.is_empty() {
            h.push_str("<ul>\n");
            for e in &s.events {
                let state = e.state.as_str();
                let _ = writeln!(
                    h,
                    "<li>{} <span class=\"{state}\">{state}</span> value {} — {}</li>",
                    escape(&format_rfc3339(e.at_ms)),
                    escape(&crate::detect::template::format_value(e.value)),
                    escape(&e.summary),
                );
            }
            h.push_str("</ul>\n");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(sensor: &str) -> Labels {
        Labels::from_pairs(&[("alertname", "Hot"), ("instance", "db1"), ("sensor", sensor)])
    }

    #[test]
    fn every_alert_gets_an_anchor_at_its_fingerprint_and_text_is_escaped() {
        let firing = Alert {
            labels: labels("<temp1>"),
            annotations: BTreeMap::from([("summary".to_string(), "too <hot>".to_string())]),
            state: AlertState::Firing,
            active_since_ms: 1_000,
            resolved_at_ms: None,
            value: 99.5,
        };
        let event = |l: Labels, at_ms: i64, state: AlertState| AlertEvent {
            at_ms,
            state,
            labels: l,
            value: 99.5,
            summary: "too <hot>".into(),
        };
        let events = vec![
            event(labels("temp2"), 500, AlertState::Firing),
            event(labels("<temp1>"), 1_000, AlertState::Firing),
            event(labels("temp2"), 800, AlertState::Resolved),
        ];
        let page = render(std::slice::from_ref(&firing), &events, 2_000);
        let gone = fingerprint_of(&labels("temp2"));
        // The anchor generatorURL points at, for the board alert and for
        // one known only from its history.
        assert!(
            page.contains(&format!("<section id=\"{}\">", firing.fingerprint())),
            "{page}"
        );
        assert!(page.contains(&format!("<section id=\"{gone}\">")), "{page}");
        assert!(page.contains("no longer on the board"));
        assert!(page.contains("too &lt;hot&gt;") && !page.contains("<hot>"), "{page}");
        // The firing alert comes first; each section lists its own events.
        assert!(page.find(&firing.fingerprint()) < page.find(&gone));
        assert_eq!(page.matches("<span class=\"resolved\">resolved</span>").count(), 1);
        assert!(render(&[], &[], 0).contains("No alerts"));
    }
}
