//! The Prometheus remote-write 1.0 messages (`prometheus.WriteRequest` from
//! Prometheus' `prompb/remote.proto` and `types.proto`), declared by hand
//! with prost derives: the receiver needs four small messages, which is
//! less than a build script and a vendored `.proto` would cost. Fields this
//! receiver does not use (metadata, exemplars) are left undeclared, so prost
//! skips them while decoding. These types stop at `remote_write::decode`.

/// One remote-write request: a list of series with their samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series; in 1.0 each carries its full label set.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// A series and some of its samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Label pairs, `__name__` included, sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Float samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    /// Native histogram samples, kept as raw bytes only to count them:
    /// the collector stores floats.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub histograms: Vec<Vec<u8>>,
}

/// One label pair.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Label name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Label value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// One float sample.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Timestamp in ms since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}
