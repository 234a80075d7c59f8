//! The kernel's connection tracking table: forgetting the connections of pool
//! addresses, so that a reused address never gets the previous user's late packets.
//!
//! Talks ctnetlink (`NETLINK_NETFILTER`) like `conntrack -D -s ADDR`: one dump per
//! family, then one delete per matching entry by its original tuple. The kernel
//! deletes a whole flush only by mark or family, so the filtering happens here.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, Tuple};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_proto::sys::{protocols::NETLINK_NETFILTER, SocketAddr};
use netlink_proto::ConnectionHandle;

/// ENOENT: the entry went away between the dump and the delete.
const ENOENT: i32 = 2;

/// Deletes every tracked connection whose original source lies in one of `sources`
/// (pool addresses or whole pools). Returns how many were deleted.
pub(super) async fn forget_sources(sources: &[IpNet]) -> Result<usize> {
    if sources.is_empty() {
        return Ok(0);
    }
    let (conn, handle, _) = netlink_proto::new_connection::<NetfilterMessage>(NETLINK_NETFILTER)
        .context("cannot open a netfilter netlink socket")?;
    let task = tokio::spawn(conn);
    let result = forget(&handle, sources).await;
    task.abort();
    result
}

async fn forget(handle: &ConnectionHandle<NetfilterMessage>, sources: &[IpNet]) -> Result<usize> {
    let mut deleted = 0;
    for (family, v6) in [
        (NetfilterProtoFamily::IPv4, false),
        (NetfilterProtoFamily::IPv6, true),
    ] {
        let nets: Vec<IpNet> = sources
            .iter()
            .copied()
            .filter(|n| n.addr().is_ipv6() == v6)
            .collect();
        if nets.is_empty() {
            continue;
        }
        let doomed = dump_matching(handle, family, &nets).await?;
        deleted += delete(handle, family, doomed).await?;
    }
    Ok(deleted)
}

fn request(
    family: NetfilterProtoFamily,
    flags: u16,
    msg: ConntrackMessage,
) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut m = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            msg,
        )),
    );
    m.finalize();
    m
}

/// The original tuples of the entries of `family` whose original source is in `nets`.
async fn dump_matching(
    handle: &ConnectionHandle<NetfilterMessage>,
    family: NetfilterProtoFamily,
    nets: &[IpNet],
) -> Result<Vec<Vec<Tuple>>> {
    let mut replies = handle
        .request(
            request(
                family,
                NLM_F_REQUEST | NLM_F_DUMP,
                ConntrackMessage::Get(vec![]),
            ),
            SocketAddr::new(0, 0),
        )
        .context("cannot ask the kernel for its connection tracking table")?;
    let mut doomed = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                ..
            }) => {
                for attr in attrs {
                    if let ConntrackAttribute::CtaTupleOrig(tuple) = attr {
                        if original_source(&tuple)
                            .is_some_and(|src| nets.iter().any(|n| n.contains(&src)))
                        {
                            doomed.push(tuple);
                        }
                    }
                }
            }
            NetlinkPayload::Error(e) if e.code.is_some() => {
                bail!("the kernel refused to list its connection tracking table: {e}")
            }
            _ => {}
        }
    }
    Ok(doomed)
}

fn original_source(tuple: &[Tuple]) -> Option<std::net::IpAddr> {
    tuple.iter().find_map(|t| match t {
        Tuple::Ip(ips) => ips.iter().find_map(|ip| match ip {
            IPTuple::SourceAddress(a) => Some(*a),
            _ => None,
        }),
        _ => None,
    })
}

/// Deletes the entries with these original tuples, in one batch.
async fn delete(
    handle: &ConnectionHandle<NetfilterMessage>,
    family: NetfilterProtoFamily,
    tuples: Vec<Vec<Tuple>>,
) -> Result<usize> {
    if tuples.is_empty() {
        return Ok(0);
    }
    let batch: Vec<_> = tuples
        .into_iter()
        .map(|t| {
            request(
                family,
                NLM_F_REQUEST | NLM_F_ACK,
                ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(t)]),
            )
        })
        .collect();
    let mut replies = handle
        .request_batch(batch, SocketAddr::new(0, 0))
        .context("cannot ask the kernel to delete tracked connections")?;
    let mut deleted = 0;
    while let Some(reply) = replies.next().await {
        if let NetlinkPayload::Error(e) = reply.payload {
            match e.code.map(|c| -c.get()) {
                None => deleted += 1,
                Some(ENOENT) => {}
                Some(_) => bail!("the kernel refused to delete a tracked connection: {e}"),
            }
        }
    }
    Ok(deleted)
}
