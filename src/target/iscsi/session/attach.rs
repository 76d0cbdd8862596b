//! Attaching a logged-in session to its reactor: one LUN per VP of the host, each with its
//! own block engine.

use super::*;

/// Hands a session that reached full-feature phase to the reactor its ticket has a place on:
/// one LUN per VP of its host (at most `MAX_LUNS_PER_ISCSI_SESSION`, in LUN order), each
/// with its own engine whose slots are numbered from its position. A VP whose volume is being
/// deleted is left out.
pub fn attach(logged_in: LoggedIn, context: &IscsiContext) {
    let snapshot = context.published.load();
    let peer = logged_in.peer;
    let host = logged_in.host.clone();
    let nexus = std::sync::Arc::new(scsi::Nexus {
        initiator_port: format!(
            "{},i,0x{}",
            logged_in.initiator_name,
            logged_in
                .isid
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        target_port: format!(
            "{},t,0x{:04x}",
            context.target_name,
            crate::target::iscsi::login::TARGET_PORTAL_GROUP_TAG
        ),
        host: host.clone(),
    });
    let mut paths: Vec<_> = snapshot.paths_of(&host).collect();
    paths.sort_by_key(|(_, view)| view.vpath.lun);
    if paths.len() > MAX_LUNS_PER_ISCSI_SESSION {
        log::warn!(
            "iSCSI {peer}: host {host} has {} VPs; the first {MAX_LUNS_PER_ISCSI_SESSION} by \
             LUN are served",
            paths.len()
        );
        paths.truncate(MAX_LUNS_PER_ISCSI_SESSION);
    }
    // The buffers the session's engines keep for reuse are a connection's worth, shared.
    let retained_per_lun =
        (MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION / paths.len().max(1)).max(MAX_IO_BYTES);
    let mut luns = Vec::with_capacity(paths.len());
    let mut opens = Vec::with_capacity(paths.len());
    for (position, (path_index, view)) in paths.into_iter().enumerate() {
        let volume = &view.vpath.volume;
        let Ok(open) = OpenGuard::open(volume) else {
            continue;
        };
        let engine = BlockEngine::new(
            view.vpath.clone(),
            path_index,
            context.published.clone(),
            context.provisioner.clone(),
            EngineConfig::front_end(
                position * ISCSI_SLOTS_PER_LUN,
                SCSI_TASKS_PER_LUN,
                MAX_IO_BYTES,
                retained_per_lun,
            ),
        );
        let identity = scsi::LunIdentity::new(volume.uuid, &context.target_name, PROTOCOL_ISCSI);
        let unit = context.scsi.get(volume);
        let number = u64::from(view.vpath.lun);
        luns.push((
            number,
            view.vpath.id,
            ScsiLun::new(number, engine, unit, nexus.clone(), identity),
        ));
        opens.push(open);
    }
    logged_in
        .registry_entry
        .set_luns(luns.iter().map(|(number, _, _)| *number).collect());
    log::info!(
        "iSCSI {peer}: {} (host {host}) in full-feature phase; LUNs {:?}",
        logged_in.initiator_name,
        luns.iter()
            .map(|(number, _, _)| *number)
            .collect::<Vec<_>>()
    );
    let reactor = logged_in.ticket.place.reactor();
    let session = IscsiSession::new(
        logged_in,
        luns,
        opens,
        context.target_name.clone(),
        context.published.clone(),
    );
    if let Some(reactor) = context.reactors.get(reactor) {
        reactor.post(Message::Attach(Box::new(session)));
    }
}
