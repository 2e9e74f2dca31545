//! `--setup-interface NAME`: a dummy interface holding the listen addresses (netlink), as
//! NodeLocal DNSCache makes `nodelocaldns`, so the link-local address answers on the node without
//! touching a real interface. It is reused if it already exists (a restart, or the previous
//! instance during a handoff) and removed on exit unless `--keep-interface`.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkDummy, LinkUnspec};
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error(
        "cannot create dummy interface {name}: this kernel has no dummy link type ({cause}); load the `dummy` module, or run without --setup-interface and put the listen address on an interface yourself"
    )]
    NoDummy { name: String, cause: String },
    #[error("cannot create interface {name}: {cause}")]
    Create { name: String, cause: String },
    #[error("cannot add {ip} to {name}: {cause}")]
    Address { name: String, ip: IpAddr, cause: String },
}

/// The interface made (or found) at start-up.
pub struct Interface {
    handle: Handle,
    pub name: String,
    pub index: u32,
    /// Created by us (and so ours to remove).
    pub created: bool,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

async fn index_of(handle: &Handle, name: &str) -> Option<u32> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    links.try_next().await.ok().flatten().map(|m| m.header.index)
}

/// Creates (or finds) dummy interface `name`, adds `ips` to it and brings it up.
pub async fn setup(name: &str, ips: &[IpAddr]) -> Result<Interface, InterfaceError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| InterfaceError::Netlink(e.to_string()))?;
    tokio::spawn(connection);
    let (index, created) = match index_of(&handle, name).await {
        Some(index) => (index, false),
        None => {
            if let Err(e) = handle.link().add(LinkDummy::new(name).up().build()).execute().await {
                // EOPNOTSUPP (95): no such link type in this kernel.
                return Err(if errno(&e) == Some(95) {
                    InterfaceError::NoDummy { name: name.to_owned(), cause: e.to_string() }
                } else {
                    InterfaceError::Create { name: name.to_owned(), cause: e.to_string() }
                });
            }
            let index = index_of(&handle, name).await.ok_or_else(|| InterfaceError::Create {
                name: name.to_owned(),
                cause: "created but not found".into(),
            })?;
            (index, true)
        }
    };
    for ip in ips.iter().filter(|ip| !ip.is_unspecified()) {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        if let Err(e) = handle.address().add(index, *ip, prefix).execute().await {
            // EEXIST (17): already there from a previous run.
            if errno(&e) != Some(17) {
                return Err(InterfaceError::Address { name: name.to_owned(), ip: *ip, cause: e.to_string() });
            }
        }
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| InterfaceError::Create { name: name.to_owned(), cause: e.to_string() })?;
    info!(interface = name, index, created, addresses = ?ips, "interface ready");
    Ok(Interface { handle, name: name.to_owned(), index, created })
}

impl Interface {
    /// Removes the interface if this process created it.
    pub async fn remove(self) {
        if !self.created {
            return;
        }
        match self.handle.link().del(self.index).execute().await {
            Ok(()) => info!(interface = %self.name, "interface removed"),
            Err(e) => tracing::warn!(interface = %self.name, error = %e, "could not remove the interface"),
        }
    }
}
