//! Prometheus metrics for the controller (and, later, builds), served at `/metrics`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-controller reconcile metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `builderpool` or `imagebuild`.
    pub controller: String,
    /// `success` or `error`.
    pub result: String,
}

/// Labels of per-controller error metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `builderpool` or `imagebuild`.
    pub controller: String,
    /// A short error category.
    pub error: String,
}

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `builderpool` or `imagebuild`.
    pub controller: String,
}

/// Labels of build results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `succeeded` or `failed`.
    pub result: String,
}

/// All metrics of one process.
pub struct Metrics {
    registry: Mutex<Registry>,
    builds: Family<ResultLabels, Counter>,
    build_durations: Family<ResultLabels, Histogram>,
    dispatch_latency: Histogram,
    queue_wait: Histogram,
    reconciles: Family<ReconcileLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register("reconciles", "Reconciles by controller and result", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile errors by controller and category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            durations.clone(),
        );
        let builds = Family::<ResultLabels, Counter>::default();
        let build_durations = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 14))
        });
        registry.register("builds", "Finished ImageBuilds by result", builds.clone());
        registry.register(
            "build_duration_seconds",
            "ImageBuild duration from first dispatch to result",
            build_durations.clone(),
        );
        let dispatch_latency = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let queue_wait = Histogram::new(exponential_buckets(0.01, 2.0, 18));
        registry.register(
            "dispatch_latency_seconds",
            "From creating a NodeBuild to seeing its agent start the build",
            dispatch_latency.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time a NodeBuild waited for a free build slot on its node",
            queue_wait.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            builds,
            build_durations,
            dispatch_latency,
            queue_wait,
            reconciles,
            errors,
            durations,
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn reconciled(&self, controller: &str, seconds: f64, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&ReconcileLabels {
                controller: controller.into(),
                result: result.into(),
            })
            .inc();
        self.durations
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .observe(seconds);
        if let Some(error) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    controller: controller.into(),
                    error: error.into(),
                })
                .inc();
        }
    }

    /// Records a finished ImageBuild.
    pub fn build_finished(&self, result: &str, seconds: f64) {
        let labels = ResultLabels { result: result.into() };
        self.builds.get_or_create(&labels).inc();
        self.build_durations.get_or_create(&labels).observe(seconds);
    }

    /// Records the time from creating a NodeBuild to its agent starting it.
    pub fn dispatched(&self, seconds: f64) {
        self.dispatch_latency.observe(seconds);
    }

    /// Records how long a NodeBuild waited in its node's queue.
    pub fn queued(&self, seconds: f64) {
        self.queue_wait.observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}
