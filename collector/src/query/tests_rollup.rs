//! Differential tests of the rollup planner (`eval/rollup.rs`): the same
//! queries evaluated with rollups offered and with raw samples only must
//! give bit-identical results, on data made to catch the corner cases —
//! irregular timestamps, samples exactly on bucket boundaries, NaN, stale
//! markers, counter resets, gaps, zeros of both signs, late out-of-order
//! writes and overwrites — through literal data and through a real store.

#![allow(clippy::unwrap_used)]

use std::cell::Cell;

use super::eval::{self, Limits, Source, Value};
use crate::model::{Labels, Matcher, STALE_NAN_BITS, SeriesSamples};
use crate::store::{Resolution, RollupSeries, Store, StoreError, StoreOptions};

const MIN: i64 = 60_000;
const H: i64 = 3_600_000;
/// An hour boundary (2023-11-14T22:00:00Z), so windows can align.
const BASE: i64 = 1_699_999_200_000;

/// A source that forwards raw reads and refuses rollups.
struct RawOnly<'a>(&'a dyn Source);

impl Source for RawOnly<'_> {
    fn select(&self, m: &[Matcher], start: i64, end: i64) -> Result<Vec<SeriesSamples>, StoreError> {
        self.0.select(m, start, end)
    }
}

/// A source that forwards everything, offers rollups at `offer` (the
/// store offers none by default, see `query.rs`) and counts rollup reads
/// served.
struct Counting<'a> {
    inner: &'a dyn Source,
    offer: &'static [Resolution],
    served: Cell<usize>,
}

impl Source for Counting<'_> {
    fn select(&self, m: &[Matcher], start: i64, end: i64) -> Result<Vec<SeriesSamples>, StoreError> {
        self.inner.select(m, start, end)
    }

    fn select_rollup(
        &self,
        m: &[Matcher],
        start: i64,
        end: i64,
        res: Resolution,
    ) -> Result<Option<Vec<RollupSeries>>, StoreError> {
        let got = self.inner.select_rollup(m, start, end, res)?;
        if got.is_some() {
            self.served.set(self.served.get() + 1);
        }
        Ok(got)
    }

    fn rollup_resolutions(&self) -> &'static [Resolution] {
        self.offer
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// Deterministic pseudo-random numbers (no external state).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Ten hours of data for a few series of `m`, one instance per series.
fn fixture() -> Vec<SeriesSamples> {
    let stale = f64::from_bits(STALE_NAN_BITS);
    let mut rng = Lcg(7);
    let mut out = Vec::new();
    // Irregular gauge with NaNs, stale markers, boundary samples and a gap.
    let mut s = Vec::new();
    let mut t = BASE;
    while t < BASE + 10 * H {
        let v = match rng.next(40) {
            0 => f64::NAN,
            1 => stale,
            k => (k as f64 - 17.0) * 0.37 + rng.next(1000) as f64 / 7.0,
        };
        s.push((t, v));
        // Jump straight to the next 5-minute boundary now and then.
        t = if rng.next(5) == 0 {
            (t / (5 * MIN) + 1) * 5 * MIN
        } else {
            t + 1 + rng.next(45_000) as i64
        };
        if (BASE + 4 * H..BASE + 5 * H + 30 * MIN).contains(&t) {
            t = BASE + 5 * H + 30 * MIN;
        }
    }
    out.push(SeriesSamples {
        labels: labels(&[("__name__", "m"), ("instance", "a"), ("kind", "gauge")]),
        samples: s,
    });
    // A counter with resets, sampled exactly on every minute (so on every
    // bucket boundary).
    let mut c = 0.0;
    let samples = (0..600)
        .map(|i| {
            c = if i % 97 == 0 {
                1.0
            } else {
                c + rng.next(500) as f64 + 0.25
            };
            (BASE + i * MIN, c)
        })
        .collect();
    out.push(SeriesSamples {
        labels: labels(&[("__name__", "m"), ("instance", "b"), ("kind", "counter")]),
        samples,
    });
    // Only NaNs in hour 2, stale markers only in hour 3, otherwise ±0 and 1.
    let samples = (0..600)
        .map(|i| {
            let v = match i / 60 {
                2 => f64::NAN,
                3 => stale,
                7 => [0.0, -0.0, 1.0][(i % 3) as usize],
                _ => 2.5 + (i % 11) as f64,
            };
            (BASE + i * MIN + 17, v)
        })
        .collect();
    out.push(SeriesSamples {
        labels: labels(&[("__name__", "m"), ("instance", "c"), ("kind", "odd")]),
        samples,
    });
    out
}

/// Bit-for-bit equality of two results (NaN equal to NaN).
fn assert_same(query: &str, a: &Value, b: &Value) {
    let (Value::Matrix(a), Value::Matrix(b)) = (a, b) else {
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "{query}");
        return;
    };
    assert_eq!(a.len(), b.len(), "{query}: series");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.labels, y.labels, "{query}");
        let bits = |p: &[(i64, f64)]| -> Vec<(i64, u64)> {
            p.iter()
                .map(|(t, v)| (*t, if v.is_nan() { 1 } else { v.to_bits() }))
                .collect()
        };
        assert_eq!(bits(&x.points), bits(&y.points), "{query} {:?}", x.labels);
    }
}

/// Evaluates every query over every grid through both paths; returns how
/// many evaluations the rollups served.
fn differential(src: &dyn Source, queries: &[String], grids: &[(i64, i64, i64)]) -> usize {
    let counting = Counting {
        inner: src,
        offer: &[Resolution::FiveMinutes, Resolution::OneHour],
        served: Cell::new(0),
    };
    let raw = RawOnly(src);
    for q in queries {
        let expr = eval::parse(q).unwrap();
        for &(start, end, step) in grids {
            let want = eval::eval_range(&expr, &raw, start, end, step, Limits::default(), None);
            let got = eval::eval_range(&expr, &counting, start, end, step, Limits::default(), None);
            let label = format!("{q} [{start}, {end}] step {step}");
            match (want, got) {
                (Ok(w), Ok(g)) => assert_same(&label, &g, &w),
                (Err(w), Err(g)) => assert_eq!(w.to_string(), g.to_string(), "{label}"),
                (w, g) => panic!("{label}: raw {w:?} vs rollup {g:?}"),
            }
        }
    }
    counting.served.get()
}

fn queries() -> Vec<String> {
    let mut out = Vec::new();
    for f in [
        "min_over_time",
        "max_over_time",
        "count_over_time",
        "sum_over_time",
        "avg_over_time",
    ] {
        for sel in [
            "m[1h]",
            "m[2h]",
            "m[5m]",
            "m[15m]",
            "m[90m]",
            "m[1h] offset 1h",
            "m[1h] offset 5m",
            "m{kind=\"gauge\"}[3h]",
        ] {
            out.push(format!("{f}({sel})"));
        }
    }
    out.push("sum by (kind) (max_over_time(m[1h]))".into());
    out.push("count_over_time(m[1h]) / count_over_time(m[1h] offset 1h)".into());
    out.push("max_over_time(m[1h] @ 1700010000)".into());
    out.push("max_over_time(m[1h:5m])".into());
    out
}

fn grids() -> Vec<(i64, i64, i64)> {
    vec![
        (BASE + H, BASE + 11 * H, H),
        (BASE + 2 * H, BASE + 10 * H, 2 * H),
        (BASE + H, BASE + 6 * H, 5 * MIN),
        (BASE + 3 * H, BASE + 3 * H, H),
        (BASE + H + 1, BASE + 11 * H, H),
        (BASE + H + 30_000, BASE + 8 * H, 15 * MIN),
        (BASE + 8 * H, BASE + 9 * H, H),
        (BASE + 9 * H, BASE + 15 * H, H),
    ]
}

#[test]
fn rollups_over_literal_data_equal_raw_evaluation() {
    let data = fixture();
    let served = differential(&eval::Literal(&data), &queries(), &grids());
    assert!(served > 50, "rollups served only {served} evaluations");
}

/// Samples not strictly ascending make the literal source refuse rollups
/// (the planner's bucket lookup needs order); answers stay the raw ones.
#[test]
fn unordered_literal_data_is_read_raw() {
    let data = vec![SeriesSamples {
        labels: labels(&[("__name__", "m")]),
        samples: vec![(BASE + 2 * MIN, 1.0), (BASE + MIN, 2.0), (BASE + MIN, 3.0)],
    }];
    let served = differential(
        &eval::Literal(&data),
        &["max_over_time(m[1h])".into()],
        &[(BASE + H, BASE + H, H)],
    );
    assert_eq!(served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_from_a_store_equal_raw_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let data = fixture();
    store.append_unsequenced(data.clone()).await.unwrap();
    store.seal_all().unwrap();
    let sealed = store.stats();
    // Appends counter samples of "b" through `[from, to)` and then one
    // more batch: the writer seals (by time, windows the newest sample has
    // closed) after answering and before taking the next request, so the
    // second append returns only after that seal.
    let advance = |from: i64, to: i64| {
        let store = store.clone();
        async move {
            let b = labels(&[("__name__", "m"), ("instance", "b"), ("kind", "counter")]);
            let samples: Vec<(i64, f64)> = (from..to).step_by(MIN as usize).map(|t| (t, t as f64 / 1e3)).collect();
            store
                .append_unsequenced(vec![SeriesSamples {
                    labels: b.clone(),
                    samples,
                }])
                .await
                .unwrap();
            store
                .append_unsequenced(vec![SeriesSamples {
                    labels: b,
                    samples: vec![(to, 1.0)],
                }])
                .await
                .unwrap();
        }
    };
    // A late series of instance "a" fills an already sealed window: a
    // second block there once time moves on.
    let late = SeriesSamples {
        labels: labels(&[("__name__", "m"), ("instance", "a"), ("kind", "late")]),
        samples: (0..90).map(|i| (BASE + 2 * H + i * 40_000, i as f64 * 1.5)).collect(),
    };
    store.append_unsequenced(vec![late.clone()]).await.unwrap();
    advance(BASE + 10 * H, BASE + 12 * H).await;
    // Then it rewrites some of its timestamps with new values: a third
    // block, repeating timestamps of the second (the newer value wins).
    let rewrite = SeriesSamples {
        samples: (0..20)
            .map(|i| (BASE + 2 * H + 40 * MIN + i * 40_000, 1e6 - i as f64))
            .collect(),
        ..late
    };
    store.append_unsequenced(vec![rewrite]).await.unwrap();
    advance(BASE + 12 * H + MIN, BASE + 14 * H).await;
    // The newest hours stay in the head.
    let st = store.stats();
    assert!(st.blocks >= sealed.blocks + 2 && st.head_samples > 0, "{st:?}");
    assert_eq!(st.compactions, sealed.compactions);
    let run = || {
        let store = store.clone();
        std::thread::spawn(move || differential(&store, &queries(), &grids()))
            .join()
            .unwrap()
    };
    assert!(run() > 20, "the store served no rollups");
    // The same once the late data is sealed (and compacted) too.
    store.seal_all().unwrap();
    assert!(run() > 20);
}

/// Raw retention drops blocks whose rollups stay: the planner must not
/// answer from those rollups, where raw samples give nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_outliving_raw_samples_are_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        retention_ms: Some(4 * H),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), opts).unwrap();
    store.append_unsequenced(fixture()).await.unwrap();
    store.seal_all().unwrap();
    assert!(!store.raw_kept(BASE, BASE + 2 * H));
    let q = vec!["max_over_time(m[1h])".to_string()];
    let store2 = store.clone();
    let (old, new) = std::thread::spawn(move || {
        (
            differential(&store2, &q, &[(BASE + H, BASE + 3 * H, H)]),
            differential(&store2, &q, &[(BASE + 8 * H, BASE + 10 * H, H)]),
        )
    })
    .join()
    .unwrap();
    assert_eq!(old, 0);
    assert_eq!(new, 1);
}

/// The gain on a real store: `HPBENCH_STORE` (default
/// `/tmp/hpbench-D2/hostpulse`, a copy of `hostpulse-collector import` of
/// the 20-host, 12-hour fleet dataset), queries at a 1 h step over the
/// whole span, each through rollups and raw-only; prints medians of five
/// runs after a warm-up and checks the answers are identical. Run with
/// `cargo test --release -p hostpulse-collector --lib rollup_gain --
/// --ignored --nocapture`.
#[test]
#[ignore = "needs an imported benchmark store; prints timings"]
fn rollup_gain_on_the_fleet_dataset() {
    let path = std::env::var("HPBENCH_STORE").unwrap_or_else(|_| "/tmp/hpbench-D2/hostpulse".into());
    // A measurement, not a check: without an imported store there is
    // nothing to measure (and opening the path would create an empty one).
    if !std::path::Path::new(&path).join("blocks").is_dir() {
        println!("no imported store at {path} (set HPBENCH_STORE): nothing to measure");
        return;
    }
    // With the default decoded-section cache, and with none (every read
    // decodes, as when the cache holds other data).
    for cache in [crate::store::DEFAULT_DECODED_CACHE_BYTES, 0] {
        println!("decoded-section cache: {cache} bytes");
        let opts = StoreOptions {
            decoded_cache_bytes: cache,
            ..StoreOptions::default()
        };
        let store = Store::open(std::path::Path::new(&path), opts).unwrap();
        gain_on(&store);
    }
}

fn gain_on(store: &Store) {
    use std::time::Instant;
    let probe = store
        .select(
            &[
                Matcher::equal("__name__", "node_hwmon_temp_celsius"),
                Matcher::equal("instance", "host-00003"),
            ],
            i64::MIN / 2,
            i64::MAX / 2,
        )
        .unwrap();
    let samples = &probe.first().unwrap().samples;
    let (first, last) = (samples.first().unwrap().0, samples.last().unwrap().0);
    let start = (first.div_euclid(H) + 1) * H;
    let end = last.div_euclid(H) * H;
    println!("span {first}..{last}, grid {start}..{end} step 1h");
    let median = |f: &dyn Fn() -> Value| -> (f64, f64, Value) {
        let t = Instant::now();
        let v = f();
        let cold = t.elapsed().as_secs_f64() * 1e3;
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        (cold, times[2], v)
    };
    for name in ["node_hwmon_temp_celsius", "node_network_receive_bytes_total"] {
        let m = [Matcher::equal("__name__", name)];
        let t = Instant::now();
        let r = store
            .select_rollup(&m, start - H, end - H, Resolution::OneHour)
            .unwrap();
        let a = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let mut n = 0;
        for k in 0..=(end - start) / H {
            n += store.select(&m, start + k * H, start + k * H).unwrap().len();
        }
        let b = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "{name}: select_rollup {a:.1} ms ({} series), point reads {b:.1} ms ({n})",
            r.len()
        );
    }
    for q in [
        "max_over_time(node_hwmon_temp_celsius[1h])",
        "min_over_time(node_hwmon_temp_celsius[1h])",
        "count_over_time(node_network_receive_bytes_total[1h])",
        "max by (instance) (max_over_time(node_hwmon_temp_celsius[1h]))",
        "max_over_time(node_hwmon_temp_celsius{instance=\"host-00003\",chip=\"platform_coretemp_0\",sensor=\"temp1\"}[1h])",
    ] {
        let expr = eval::parse(q).unwrap();
        let raw_src = RawOnly(store);
        let raw = |s: &dyn Source| eval::eval_range(&expr, s, start, end, H, Limits::default(), None).unwrap();
        // Raw first: it warms the decoded-section cache both paths use.
        let (raw_cold, raw_med, want) = median(&|| raw(&raw_src));
        let planned = Counting {
            inner: store,
            offer: &[Resolution::OneHour],
            served: Cell::new(0),
        };
        let (roll_cold, roll_med, got) = median(&|| raw(&planned));
        assert!(planned.served.get() > 0);
        assert_same(q, &got, &want);
        println!(
            "{q}\n  raw: first {raw_cold:.1} ms, median {raw_med:.1} ms; rollups: first {roll_cold:.1} ms, median {roll_med:.1} ms ({:.1}x)",
            raw_med / roll_med
        );
    }
}
