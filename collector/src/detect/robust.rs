//! Robust statistics the detectors share: median, median absolute
//! deviation, and the Theil–Sen slope with Sen's confidence interval. All
//! are pure functions over slices, ignore NaN, and return `None` rather
//! than a misleading number when there is too little data.

/// The median of the finite values (`None` if there are none).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// The median absolute deviation from the median, scaled by 1.4826 so it
/// estimates the standard deviation of normal data.
pub fn mad(values: &[f64]) -> Option<f64> {
    let m = median(values)?;
    let deviations: Vec<f64> = values.iter().filter(|x| x.is_finite()).map(|x| (x - m).abs()).collect();
    median(&deviations).map(|d| d * 1.4826)
}

/// A Theil–Sen fit of `y` over `t` (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// Median of pairwise slopes, units of `y` per second.
    pub slope: f64,
    /// Lower bound of the slope's confidence interval.
    pub slope_low: f64,
    /// Upper bound of the slope's confidence interval.
    pub slope_high: f64,
    /// Median of `y - slope * t`: the fitted value at `t = 0`.
    pub intercept: f64,
}

/// Most points a fit uses; longer series are subsampled evenly, which
/// keeps the pairwise work under 5 000 slopes.
pub const MAX_FIT_POINTS: usize = 100;

/// Fits `points` (`(t seconds, y)`), with Sen's two-sided confidence
/// interval for the slope at normal quantile `z` (1.645 for 90 %). Needs
/// at least 5 finite points at distinct times.
pub fn theil_sen(points: &[(f64, f64)], z: f64) -> Option<Trend> {
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, y)| t.is_finite() && y.is_finite())
        .collect();
    if finite.len() < 5 {
        return None;
    }
    let step = finite.len().div_ceil(MAX_FIT_POINTS);
    let pts: Vec<(f64, f64)> = finite.iter().copied().step_by(step.max(1)).collect();
    let mut slopes = Vec::with_capacity(pts.len() * pts.len() / 2);
    for (i, (ti, yi)) in pts.iter().enumerate() {
        for (tj, yj) in &pts[i + 1..] {
            if tj != ti {
                slopes.push((yj - yi) / (tj - ti));
            }
        }
    }
    if slopes.len() < 3 {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    let n = pts.len() as f64;
    let pairs = slopes.len() as f64;
    // Sen (1968): the interval's ends are the slopes ranked (N ∓ C) / 2,
    // with C = z * sqrt(n (n - 1) (2n + 5) / 18).
    let c = z * (n * (n - 1.0) * (2.0 * n + 5.0) / 18.0).sqrt();
    let rank = |r: f64| -> usize {
        // Ranks are clamped into the slope list; the cast is of a value
        // already inside [0, len - 1].
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = r.round().clamp(0.0, pairs - 1.0) as usize;
        i
    };
    let slope = median(&slopes)?;
    let slope_low = slopes[rank((pairs - c) / 2.0 - 1.0)];
    let slope_high = slopes[rank((pairs + c) / 2.0)];
    let residuals: Vec<f64> = pts.iter().map(|(t, y)| y - slope * t).collect();
    Some(Trend {
        slope,
        slope_low,
        slope_high,
        intercept: median(&residuals)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad_ignore_outliers_and_nan() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        let m = mad(&[10.0, 11.0, 9.0, 10.0, 1000.0]).unwrap();
        assert!((m - 1.4826).abs() < 1e-9, "{m}");
    }

    #[test]
    fn theil_sen_recovers_a_slope_despite_outliers() {
        // y = 2t + 5 with deterministic jitter and two wild points.
        let mut pts: Vec<(f64, f64)> = (0..200)
            .map(|i| {
                let t = f64::from(i);
                let jitter = f64::from((i * 7919) % 11) / 10.0 - 0.5;
                (t, 2.0 * t + 5.0 + jitter)
            })
            .collect();
        pts[50].1 = 1e6;
        pts[120].1 = -1e6;
        let fit = theil_sen(&pts, 1.645).unwrap();
        assert!((fit.slope - 2.0).abs() < 0.01, "{fit:?}");
        assert!(fit.slope_low <= fit.slope && fit.slope <= fit.slope_high, "{fit:?}");
        assert!(fit.slope_low > 1.95 && fit.slope_high < 2.05, "{fit:?}");
        assert!((fit.intercept - 5.0).abs() < 1.0, "{fit:?}");
    }

    #[test]
    fn flat_noise_has_an_interval_around_zero() {
        let pts: Vec<(f64, f64)> = (0..60).map(|i| (f64::from(i), f64::from((i * 31) % 7))).collect();
        let fit = theil_sen(&pts, 1.645).unwrap();
        assert!(fit.slope_low <= 0.0 && fit.slope_high >= 0.0, "{fit:?}");
        assert_eq!(theil_sen(&pts[..4], 1.645), None, "too few points");
    }
}
