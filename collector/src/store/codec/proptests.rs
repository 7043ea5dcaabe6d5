//! Property tests of the column codecs: thousands of generated columns —
//! random and adversarial shapes (constant, counters with resets, irregular
//! and unsorted timestamps, NaN payloads including the stale marker, ±Inf,
//! -0.0, huge and tiny magnitudes, random bit patterns) — must round-trip
//! bit-exactly, and random or mutated bytes must decode to an error or to
//! some values, never a panic. A small seeded generator keeps every failure
//! reproducible from the printed seed.

#![allow(clippy::unwrap_used)]

use super::{CodecError, timestamps, values};

/// xorshift64*: deterministic, good enough to generate test columns.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn gauss(&mut self) -> f64 {
        (0..6).map(|_| self.unit()).sum::<f64>() - 3.0
    }
}

const SPECIAL: [u64; 8] = [
    0x7ff0_0000_0000_0002, // Prometheus stale marker
    0x7ff8_0000_0000_0000, // canonical NaN
    0xfff8_0000_0000_0001, // negative NaN with payload
    0x7ff0_0000_0000_0000, // +Inf
    0xfff0_0000_0000_0000, // -Inf
    0x8000_0000_0000_0000, // -0.0
    0x0000_0000_0000_0001, // smallest subnormal
    0x7fef_ffff_ffff_ffff, // f64::MAX
];

/// One generated value column of `n` values in one of several shapes.
pub(crate) fn value_column(rng: &mut Rng, n: usize) -> Vec<f64> {
    let shape = rng.below(10);
    let mut v = Vec::with_capacity(n);
    let mut acc = 0.0f64;
    let scale = 10f64.powi(rng.below(5) as i32);
    for _ in 0..n {
        let x = match shape {
            0 => 42.0,
            1 => {
                // Counter with resets.
                if rng.below(200) == 0 {
                    acc = 0.0;
                }
                acc += (rng.below(5000) * 512) as f64;
                acc
            }
            2 => (45.0 + 3.0 * rng.gauss()).round(),
            3 => {
                acc += rng.below(1000) as f64 / 100.0;
                (acc * 100.0).round() / 100.0
            }
            4 => f64::from_bits(rng.next()),
            5 => f64::from_bits(SPECIAL[rng.below(SPECIAL.len() as u64) as usize]),
            6 => {
                // Mostly decimals, a few specials.
                if rng.below(20) == 0 {
                    f64::from_bits(SPECIAL[rng.below(SPECIAL.len() as u64) as usize])
                } else {
                    (rng.gauss() * 1000.0).round() / scale
                }
            }
            7 => rng.gauss() * 1e300,
            8 => rng.gauss() * 1e-300,
            _ => (rng.next() as i64) as f64,
        };
        v.push(x);
    }
    v
}

/// One generated timestamp column.
pub(crate) fn timestamp_column(rng: &mut Rng, n: usize) -> Vec<i64> {
    let shape = rng.below(5);
    let mut t = 1_767_225_600_000i64 + rng.below(1 << 30) as i64;
    (0..n)
        .map(|_| {
            t = match shape {
                0 => t + 10_000,
                1 => t + 10_000 + rng.below(50) as i64 - 25,
                2 => t + rng.below(1_000_000) as i64,
                3 => rng.next() as i64,
                _ => t.wrapping_add(if rng.below(10) == 0 { i64::MAX } else { 15_000 }),
            };
            t
        })
        .collect()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn generated_columns_round_trip_bit_exactly() {
    for seed in 0..3000u64 {
        let mut rng = Rng::new(seed);
        let n = match rng.below(4) {
            0 => rng.below(4) as usize,
            _ => rng.below(1500) as usize,
        };
        let v = value_column(&mut rng, n);
        let enc = values::encode(&v);
        let got = values::decode(&enc, n).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(bits(&got), bits(&v), "values, seed {seed}");
        let ts = timestamp_column(&mut rng, n);
        let enc = timestamps::encode(&ts);
        assert_eq!(timestamps::decode(&enc, n).unwrap(), ts, "timestamps, seed {seed}");
    }
}

#[test]
fn mutated_and_random_bytes_never_panic() {
    for seed in 0..2000u64 {
        let mut rng = Rng::new(seed);
        let n = rng.below(300) as usize;
        let mut bytes = if rng.below(2) == 0 {
            values::encode(&value_column(&mut rng, n))
        } else {
            timestamps::encode(&timestamp_column(&mut rng, n))
        };
        match rng.below(3) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
            _ => bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        }
        let asked = if rng.below(4) == 0 { rng.below(5000) as usize } else { n };
        let r: Result<Vec<f64>, CodecError> = values::decode(&bytes, asked);
        if let Ok(v) = r {
            assert_eq!(v.len(), asked);
        }
        if let Ok(t) = timestamps::decode(&bytes, asked) {
            assert_eq!(t.len(), asked);
        }
    }
}

/// Prints the codecs' bytes per sample on an OpenMetrics file from
/// `fleetgen.py` (path in `HOSTPULSE_FLEET_OM`), cut into 2 h windows per
/// series as the store seals them. Columns only: no block framing.
#[test]
#[ignore = "measurement; needs HOSTPULSE_FLEET_OM"]
fn fleet_columns_bytes_per_sample() {
    let Some(path) = std::env::var_os("HOSTPULSE_FLEET_OM") else {
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let mut series: std::collections::HashMap<&str, Vec<(i64, f64)>> = Default::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.rsplitn(3, ' ');
        let ts: i64 = parts.next().unwrap().parse().unwrap();
        let v: f64 = parts.next().unwrap().parse().unwrap();
        series.entry(parts.next().unwrap()).or_default().push((ts * 1000, v));
    }
    let (mut n, mut ts_bytes, mut v_bytes) = (0usize, 0usize, 0usize);
    let (mut v_time, mut d_time) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let mut by_metric: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (name, samples) in &series {
        let metric = name.split('{').next().unwrap_or("");
        for chunk in samples.chunk_by(|a, b| a.0 / 7_200_000 == b.0 / 7_200_000) {
            let ts: Vec<i64> = chunk.iter().map(|s| s.0).collect();
            let v: Vec<f64> = chunk.iter().map(|s| s.1).collect();
            ts_bytes += timestamps::encode(&ts).len();
            let started = std::time::Instant::now();
            let encoded = values::encode(&v);
            v_time += started.elapsed();
            let started = std::time::Instant::now();
            let decoded = values::decode(&encoded, v.len()).unwrap();
            d_time += started.elapsed();
            assert_eq!(decoded.len(), v.len());
            let vb = encoded.len();
            v_bytes += vb;
            n += chunk.len();
            let e = by_metric.entry(metric).or_default();
            e.0 += chunk.len();
            e.1 += vb;
        }
    }
    for (metric, (count, bytes)) in by_metric {
        println!(
            "  {metric}: {:.3} bytes/sample over {count}",
            bytes as f64 / count as f64
        );
    }
    println!(
        "samples={n} timestamps={:.4} values={:.4} total={:.4} bytes/sample",
        ts_bytes as f64 / n as f64,
        v_bytes as f64 / n as f64,
        (ts_bytes + v_bytes) as f64 / n as f64
    );
    println!(
        "value encoding: {:.1} ns/sample, decoding: {:.1} ns/sample",
        v_time.as_secs_f64() * 1e9 / n as f64,
        d_time.as_secs_f64() * 1e9 / n as f64
    );
}
