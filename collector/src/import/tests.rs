//! Tests of the import pipeline against a real store in a temp dir: both
//! dialects round-trip, batches split series without losing order, and a
//! bad or truncated file stops with an error naming the file and line.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;

use super::*;
use crate::model::Matcher;
use crate::store::StoreOptions;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

async fn import(store: &Store, files: &[PathBuf], batch_samples: usize) -> Result<ImportSummary, ImportError> {
    let opts = ImportOptions {
        batch_samples,
        default_timestamp_ms: 5_000,
        ..ImportOptions::default()
    };
    import_files(store, files, &opts, |_| {}).await
}

fn select(store: &Store, name: &str) -> Vec<SeriesSamples> {
    store
        .select(&[Matcher::equal("__name__", name)], i64::MIN, i64::MAX)
        .unwrap()
}

const OPENMETRICS: &str = "\
# TYPE node_hwmon_temp_celsius gauge
# UNIT node_hwmon_temp_celsius celsius
# HELP node_hwmon_temp_celsius Hardware monitor for temperature (input).
node_hwmon_temp_celsius{chip=\"coretemp_0\",sensor=\"temp1\"} 48.0 1767225600
node_hwmon_temp_celsius{chip=\"coretemp_0\",sensor=\"temp1\"} 49.0 1767225610
node_hwmon_temp_celsius{chip=\"coretemp_0\",sensor=\"temp1\"} 50.0 1767225620.5
node_hwmon_temp_celsius{sensor=\"temp1\",chip=\"coretemp_0\"} 51.0 1767225630
node_hwmon_temp_celsius{chip=\"coretemp_1\",sensor=\"temp1\"} NaN 1767225600
node_hwmon_temp_celsius{chip=\"coretemp_1\",sensor=\"temp1\"} 40 1767225610
# TYPE node_load1 gauge
node_load1 0.5
# EOF
";

#[tokio::test]
async fn openmetrics_round_trips_through_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "fleet.om", OPENMETRICS);
    let store = Store::open(&tmp.path().join("data"), StoreOptions::default()).unwrap();
    // Batches of two samples split series across appends.
    let summary = import(&store, &[file], 2).await.unwrap();
    assert_eq!(
        summary,
        ImportSummary {
            samples: 6,
            series: 3,
            non_finite: 1,
            refused_by_store: 0,
        }
    );
    store.seal_all().unwrap();
    let temps = select(&store, "node_hwmon_temp_celsius");
    assert_eq!(temps.len(), 2);
    assert_eq!(temps[0].labels.get("chip"), "coretemp_0");
    assert_eq!(
        temps[0].samples,
        vec![
            (1_767_225_600_000, 48.0),
            (1_767_225_610_000, 49.0),
            (1_767_225_620_500, 50.0),
            (1_767_225_630_000, 51.0),
        ],
        "the reordered label set is the same series"
    );
    assert_eq!(temps[1].samples, vec![(1_767_225_610_000, 40.0)]);
    assert_eq!(
        select(&store, "node_load1")[0].samples,
        vec![(5_000, 0.5)],
        "no timestamp: the import's default"
    );
}

#[tokio::test]
async fn prometheus_text_in_ms_and_interleaved_series() {
    let tmp = tempfile::tempdir().unwrap();
    // One scrape after another, as a Prometheus text dump lists them; the
    // second file goes back in time for series `a`.
    let first = write(
        tmp.path(),
        "a.prom",
        "# TYPE m gauge\nm{s=\"a\"} 1 1767225600000\nm{s=\"b\"} 2 1767225600000\n\
         m{s=\"a\"} 3 1767225601000\nm{s=\"b\"} 4 1767225601000\n",
    );
    let second = write(tmp.path(), "b.prom", "m{s=\"a\"} 0 1767225599000\n");
    let store = Store::open(&tmp.path().join("data"), StoreOptions::default()).unwrap();
    let summary = import(&store, &[first, second], 100).await.unwrap();
    assert_eq!((summary.samples, summary.series), (5, 2));
    let got = select(&store, "m");
    assert_eq!(
        got[0].samples,
        vec![
            (1_767_225_599_000, 0.0),
            (1_767_225_600_000, 1.0),
            (1_767_225_601_000, 3.0)
        ]
    );
    assert_eq!(got[1].samples, vec![(1_767_225_600_000, 2.0), (1_767_225_601_000, 4.0)]);
}

async fn import_error(text: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "bad.om", text);
    let store = Store::open(&tmp.path().join("data"), StoreOptions::default()).unwrap();
    let e = import(&store, &[file], 1).await.unwrap_err();
    let msg = e.to_string();
    // Name the file relative to the temp dir, which differs per run.
    msg.replace(&tmp.path().display().to_string(), "TMP")
}

#[tokio::test]
async fn bad_lines_are_reported_with_file_and_line() {
    let cases = [
        (
            "m 1 1767225600\nm{a=\"1\" 2 1767225601\n# EOF\n",
            "TMP/bad.om:2: unterminated label set (missing '}')",
        ),
        (
            "m 1 1767225600\n\nm one 1767225601\n# EOF\n",
            "TMP/bad.om:3: value \"one\" is not a number",
        ),
        (
            "m 1 1767225600\n# EOF\nm 2 1767225601\n",
            "TMP/bad.om:3: content after `# EOF` on line 2",
        ),
        (
            "m 1 1767225600\nm 2 1767225601\n",
            "TMP/bad.om: ends after line 2 without `# EOF`; the file may be truncated",
        ),
        ("m 1 1767225600\nm \u{0}\u{ff} 1\n", "TMP/bad.om:2: value \"\\0"),
    ];
    for (text, want) in cases {
        let got = import_error(text).await;
        assert!(got.starts_with(want), "{text:?}: got {got:?}, want {want:?}");
    }
    let mut invalid_utf8 = b"m 1 1767225600\nm{a=\"".to_vec();
    invalid_utf8.extend_from_slice(&[0xff, b'"', b'}', b' ', b'1', b'\n']);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bin.om");
    std::fs::write(&path, invalid_utf8).unwrap();
    let store = Store::open(&tmp.path().join("data"), StoreOptions::default()).unwrap();
    let e = import(&store, &[path], 1).await.unwrap_err();
    assert!(e.to_string().ends_with("bin.om:2: not valid UTF-8 after byte 5"), "{e}");
}

#[tokio::test]
async fn a_missing_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("data"), StoreOptions::default()).unwrap();
    let e = import(&store, &[tmp.path().join("nope.om")], 1).await.unwrap_err();
    assert!(matches!(e, ImportError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.om"), "{e}");
}

#[tokio::test]
async fn overlong_lines_are_refused_without_reading_them_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = "m{a=\"".to_string();
    text.push_str(&"x".repeat(MAX_LINE_BYTES as usize + 10));
    text.push_str("\"} 1\n");
    let file = write(tmp.path(), "long.prom", &text);
    let store = Store::open(&tmp.path().join("data"), StoreOptions::default()).unwrap();
    let e = import(&store, &[file], 1).await.unwrap_err();
    assert!(
        e.to_string().ends_with("long.prom:1: line longer than 1048576 bytes"),
        "{e}"
    );
}
