//! Generated gRPC code for Switchyard's config distribution (`proto/switchyard/config/v1`).
//!
//! Generated code only, plus [`encoded`]: the control plane's side of the stream with the
//! snapshot pre-encoded. Conversions to and from the domain live in `switchyard-model`.
#![forbid(unsafe_code)]

pub mod config {
    // Generated code: not ours to lint.
    #![allow(clippy::all, clippy::pedantic, clippy::allow_attributes, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("switchyard.config.v1");
    }
}

pub use config::v1;

/// The control plane's server for `ConfigDistribution`, sending [`encoded::ControlMessage`]s.
/// Nodes keep using [`v1::config_distribution_client`] and [`v1::ControlMessage`]: the
/// bytes on the wire are the same.
pub mod encoded {
    use bytes::{Buf, BufMut, Bytes};
    use prost::encoding::{DecodeContext, WireType, skip_field};

    mod generated {
        // Generated code: not ours to lint.
        #![allow(clippy::all, clippy::pedantic, clippy::allow_attributes, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/encoded/switchyard.config.v1.rs"));
    }
    pub use generated::config_distribution_server;

    /// A `ControlMessage` whose snapshot (field 1 of the `kind` oneof) was encoded once:
    /// cloning it shares the bytes, so a thousand node streams cost one encoding.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct ControlMessage {
        snapshot: Option<Bytes>,
    }

    impl ControlMessage {
        /// Encodes `snapshot` (once; clone the result for every stream).
        pub fn snapshot(snapshot: &crate::v1::Snapshot) -> ControlMessage {
            ControlMessage {
                snapshot: Some(Bytes::from(prost::Message::encode_to_vec(snapshot))),
            }
        }

        /// The encoded snapshot's size in bytes.
        pub fn snapshot_len(&self) -> usize {
            self.snapshot.as_ref().map_or(0, Bytes::len)
        }
    }

    const SNAPSHOT: u32 = 1;

    impl prost::Message for ControlMessage {
        fn encode_raw(&self, buf: &mut impl BufMut) {
            if let Some(bytes) = &self.snapshot {
                // A present oneof member is always written, even when empty.
                prost::encoding::bytes::encode(SNAPSHOT, bytes, buf);
            }
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            if tag == SNAPSHOT {
                let bytes = self.snapshot.get_or_insert_with(Bytes::new);
                prost::encoding::bytes::merge(wire_type, bytes, buf, ctx)
            } else {
                skip_field(wire_type, tag, buf, ctx)
            }
        }

        fn encoded_len(&self) -> usize {
            self.snapshot
                .as_ref()
                .map_or(0, |b| prost::encoding::bytes::encoded_len(SNAPSHOT, b))
        }

        fn clear(&mut self) {
            self.snapshot = None;
        }
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use super::*;
        use prost::Message;

        #[test]
        fn the_same_bytes_as_the_generated_message() {
            let snapshot = crate::v1::Snapshot {
                gateway: "prod-eu".into(),
                version: 42,
                proxies: vec![crate::v1::Proxy {
                    name: "support".into(),
                    base_path: "/support".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let generated = crate::v1::ControlMessage {
                kind: Some(crate::v1::control_message::Kind::Snapshot(snapshot.clone())),
            };
            let encoded = ControlMessage::snapshot(&snapshot);
            assert_eq!(encoded.encode_to_vec(), generated.encode_to_vec());
            assert_eq!(encoded.encoded_len(), generated.encoded_len());
            let decoded =
                crate::v1::ControlMessage::decode(encoded.encode_to_vec().as_slice()).unwrap();
            assert_eq!(decoded, generated);
            // An empty snapshot is still a snapshot (the oneof member is present).
            let empty = ControlMessage::snapshot(&crate::v1::Snapshot::default());
            let decoded =
                crate::v1::ControlMessage::decode(empty.encode_to_vec().as_slice()).unwrap();
            assert!(decoded.kind.is_some());
            assert_eq!(
                ControlMessage::decode(encoded.encode_to_vec().as_slice()).unwrap(),
                encoded
            );
        }
    }
}
