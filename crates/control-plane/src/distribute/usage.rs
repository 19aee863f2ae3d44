//! The gRPC `UsageReporting` service: nodes' usage batches, authenticated like a hello,
//! validated whole, stored once per record id, acknowledged after the commit.

use std::sync::Arc;

use switchyard_model::usage::{MAX_BATCH_RECORDS, UsageEntry};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::usage_reporting_server::UsageReporting;
use tonic::{Request, Response, Status};

use super::{check_token, is_token};
use crate::store::Store;

/// The largest batch message accepted, in bytes (a full batch of the longest names is
/// about 7 MiB); tonic refuses larger ones with `OUT_OF_RANGE` before decoding.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// The service; one per control-plane process.
pub struct UsageIngest {
    store: Arc<Store>,
    /// Raw rows older than this are not kept (`--usage-retention`): records older are
    /// acknowledged but not stored.
    retention: Option<chrono::Duration>,
}

impl UsageIngest {
    pub fn new(store: Arc<Store>, retention: Option<chrono::Duration>) -> UsageIngest {
        UsageIngest { store, retention }
    }

    /// The tonic server of this service, with its message bound.
    pub fn server(
        self,
    ) -> switchyard_proto::v1::usage_reporting_server::UsageReportingServer<UsageIngest> {
        switchyard_proto::v1::usage_reporting_server::UsageReportingServer::new(self)
            .max_decoding_message_size(MAX_BATCH_BYTES)
    }
}

fn record(result: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("switchyard_control_plane_usage_records_total", "result" => result)
            .increment(n);
    }
}

#[tonic::async_trait]
impl UsageReporting for UsageIngest {
    async fn report(
        &self,
        request: Request<pb::UsageBatch>,
    ) -> Result<Response<pb::UsageAck>, Status> {
        let batch = request.into_inner();
        if switchyard_model::validate_gateway_name("gateway", &batch.gateway).is_err() {
            return Err(Status::invalid_argument(
                "gateway must be 1-63 characters of a-z, 0-9 and '-'",
            ));
        }
        if !is_token(&batch.node_id, 128) {
            return Err(Status::invalid_argument(
                "node_id must be 1-128 characters of letters, digits and -._:@/+",
            ));
        }
        if batch.registration_token.len() > 1024 {
            return Err(Status::invalid_argument(
                "registration_token is longer than 1024 characters",
            ));
        }
        if let Err(status) =
            check_token(&self.store, &batch.gateway, &batch.registration_token).await
        {
            if status.code() == tonic::Code::Unauthenticated {
                tracing::warn!(gateway = %batch.gateway, node = %batch.node_id, "usage batch refused: invalid registration token");
                metrics::counter!("switchyard_control_plane_usage_batches_total", "result" => "unauthenticated").increment(1);
            }
            return Err(status);
        }
        if batch.records.len() > MAX_BATCH_RECORDS {
            metrics::counter!("switchyard_control_plane_usage_batches_total", "result" => "invalid").increment(1);
            return Err(Status::invalid_argument(format!(
                "records: at most {MAX_BATCH_RECORDS} per batch (got {})",
                batch.records.len()
            )));
        }
        let entries = batch
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| UsageEntry::from_proto(i, r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                metrics::counter!("switchyard_control_plane_usage_batches_total", "result" => "invalid").increment(1);
                tracing::warn!(gateway = %batch.gateway, node = %batch.node_id, error = %e, "usage batch refused: malformed");
                Status::invalid_argument(e.to_string())
            })?;
        let stored = self
            .store
            .ingest_usage(&batch.gateway, &batch.node_id, &entries, self.retention)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, records = entries.len(), "cannot store a usage batch; the node keeps it and retries");
                metrics::counter!("switchyard_control_plane_usage_batches_total", "result" => "unavailable").increment(1);
                Status::unavailable("the control plane cannot store usage now; retry")
            })?;
        metrics::counter!("switchyard_control_plane_usage_batches_total", "result" => "stored")
            .increment(1);
        record("stored", stored.stored);
        record("duplicate", stored.duplicates);
        record("expired", stored.expired);
        if stored.expired > 0 {
            tracing::warn!(gateway = %batch.gateway, node = %batch.node_id, expired = stored.expired,
                "usage records older than --usage-retention acknowledged but not stored");
        }
        let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Response::new(pb::UsageAck {
            stored: n(stored.stored),
            duplicates: n(stored.duplicates),
            expired: n(stored.expired),
        }))
    }
}
