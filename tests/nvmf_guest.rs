//! The Linux kernel's own NVMe/TCP initiator and target, in a QEMU guest (tests/common/guest.rs,
//! built by scripts/build-nvme-guest.sh): the peers sds is checked against.

mod common;

use common::guest::{run_guest, GuestOptions};

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
