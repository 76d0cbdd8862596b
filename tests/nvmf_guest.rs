//! The Linux kernel's own NVMe/TCP initiator and target, in a QEMU guest (tests/common/guest.rs,
//! built by scripts/build-nvme-guest.sh): the peers sds is checked against.

mod common;

use common::guest::{
    nvmet_target_script, run_guest, Guest, GuestOptions, GUEST_DEADLINE, GUEST_NVMET_PORT,
};

/// The rig itself: the guest boots, loads nvme-tcp and nvmet-tcp, and has what the other tests
/// rely on: the fabrics control device (the kernel initiator's connect), nvmet's configfs tree
/// (the kernel target's configuration) and the user-mode network.
#[test]
fn guest_has_the_kernel_initiator_and_target() {
    let output = run_guest(
        r#"
[ -c /dev/nvme-fabrics ] && echo "SDS-GUEST: fabrics"
[ -d /sys/kernel/config/nvmet/subsystems ] && echo "SDS-GUEST: nvmet"
[ -d /sys/module/nvme_tcp ] && echo "SDS-GUEST: nvme_tcp"
[ -d /sys/module/nvmet_tcp ] && echo "SDS-GUEST: nvmet_tcp"
ip -4 addr show eth0 | grep -q 10.0.2.15 && echo "SDS-GUEST: network"
exit 0
"#,
        GuestOptions::default(),
    );
    let results = output.results();
    for want in ["fabrics", "nvmet", "nvme_tcp", "nvmet_tcp", "network"] {
        assert!(
            results.contains(&want),
            "the guest lacks {want}:\n{}",
            output.text()
        );
    }
    assert_eq!(output.exit_status, Some(0), "{}", output.text());
}

/// Linux's target comes up in the guest and is reachable from this machine through the
/// forwarded port: an ICReq sent here gets the kernel's ICResp.
#[test]
fn guest_target_answers_icreq_through_the_forwarded_port() {
    use std::io::{Read, Write};
    let port = common::free_port();
    let guest = Guest::boot(
        &nvmet_target_script("nqn.2026-11.org.sds:guest-target", 16, None),
        GuestOptions::default().forward(port, GUEST_NVMET_PORT),
    );
    let ready = guest.wait_for_line("SDS-GUEST: target ready", GUEST_DEADLINE);
    assert!(ready.is_some(), "{}", guest.lines().join("\n"));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    // ICReq: type 0, hlen 128, plen 128, PFV 0, HPDA 0, no digests, MAXR2T 0.
    let mut icreq = [0u8; 128];
    icreq[2] = 128;
    icreq[4..8].copy_from_slice(&128u32.to_le_bytes());
    stream.write_all(&icreq).expect("send ICReq");
    let mut icresp = [0u8; 128];
    stream.read_exact(&mut icresp).expect("ICResp");
    assert_eq!(icresp[0], 0x01, "ICResp type: {icresp:?}");
    assert_eq!(icresp[2], 128, "ICResp hlen");
}
