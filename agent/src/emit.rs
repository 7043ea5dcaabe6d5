//! `Emitter`: where sources put the samples of one cycle. Sources name the
//! metric, its type and help once per call; the sampler stamps the cycle's
//! single timestamp and hands the result to the exposition printer or the
//! stream.

use std::collections::BTreeMap;

/// Prometheus metric type, as printed on `# TYPE` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonically increasing value (resets only on restart).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// An untyped value (node_exporter uses it for a few metrics).
    Untyped,
}

impl MetricType {
    /// The word on a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Untyped => "untyped",
        }
    }
}

/// Help text and type of one metric name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricMeta {
    /// Type of the metric.
    pub kind: MetricType,
    /// One-line help text.
    pub help: String,
}

/// One sampled value of one series (the cycle's timestamp is kept apart).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels other than `instance`/`job`, sorted by name.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// A hardware-related kernel log line, sent with the cycle's batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    /// When the kernel logged it, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Classification, e.g. `mce`, `nvme_timeout`, `medium_error`.
    pub kind: String,
    /// Device the line names (`nvme0`, `sda`), empty if none.
    pub device: String,
    /// The line as the kernel wrote it.
    pub message: String,
}

/// Collects the samples (and kernel events) of one cycle.
#[derive(Debug, Default)]
pub struct Emitter {
    samples: Vec<Sample>,
    meta: BTreeMap<String, MetricMeta>,
    events: Vec<KernelEvent>,
}

impl Emitter {
    /// An empty emitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, MetricType::Gauge, help, labels, value);
    }

    /// Records a counter sample.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, MetricType::Counter, help, labels, value);
    }

    /// Records a sample of the given type. Labels are sorted by name here, so
    /// sources may pass them in any order.
    pub fn push(&mut self, name: &str, kind: MetricType, help: &str, labels: &[(&str, &str)], value: f64) {
        if !self.meta.contains_key(name) {
            self.meta.insert(
                name.to_string(),
                MetricMeta {
                    kind,
                    help: help.to_string(),
                },
            );
        }
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        labels.sort();
        self.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }

    /// Records a kernel event to send with this cycle.
    pub fn event(&mut self, event: KernelEvent) {
        self.events.push(event);
    }

    /// Kernel events recorded so far.
    pub fn events(&self) -> &[KernelEvent] {
        &self.events
    }

    /// Moves the kernel events out.
    pub fn take_events(&mut self) -> Vec<KernelEvent> {
        std::mem::take(&mut self.events)
    }

    /// Samples recorded so far, in emission order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Type and help of every metric name recorded so far.
    pub fn meta(&self) -> &BTreeMap<String, MetricMeta> {
        &self.meta
    }

    /// Moves everything out, leaving the emitter empty.
    pub fn take(&mut self) -> (Vec<Sample>, BTreeMap<String, MetricMeta>) {
        (std::mem::take(&mut self.samples), std::mem::take(&mut self.meta))
    }

    /// Appends everything from `other`.
    pub fn extend(&mut self, other: Emitter) {
        for (name, meta) in other.meta {
            self.meta.entry(name).or_insert(meta);
        }
        self.samples.extend(other.samples);
        self.events.extend(other.events);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_meta_kept_once() {
        let mut out = Emitter::new();
        out.gauge("node_x", "first help", &[("z", "1"), ("a", "2")], 1.0);
        out.counter("node_x", "ignored help", &[], 2.0);
        assert_eq!(
            out.samples()[0].labels,
            vec![("a".into(), "2".into()), ("z".into(), "1".into())]
        );
        assert_eq!(
            out.meta()["node_x"],
            MetricMeta {
                kind: MetricType::Gauge,
                help: "first help".into()
            }
        );
    }
}
