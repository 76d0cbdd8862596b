//! The requests that are not SCSI commands: NOP-Out, task management, Text (SendTargets)
//! and Logout; SNACK and a second Login are refused.

use super::*;

impl IscsiSession {
    /// NOP-Out, Task Management, Text, Logout, SNACK, a Login in full-feature phase.
    pub(super) fn take_other(
        &mut self,
        bhs: &Bhs,
        pdu: InitiatorPdu,
        payload: Vec<u8>,
        ctx: &mut SessionContext,
    ) {
        match pdu {
            InitiatorPdu::NopOut(nop) => {
                if nop.initiator_task_tag == RESERVED_TAG {
                    // An answer to our NOP-In (or a ping that wants none).
                    self.nop_pending = None;
                    return;
                }
                if !self.accept_cmd_sn(nop.immediate, nop.cmd_sn) {
                    return;
                }
                let nop_in = NopIn {
                    data_segment_length: payload.len() as u32,
                    lun: nop.lun,
                    initiator_task_tag: nop.initiator_task_tag,
                    target_transfer_tag: RESERVED_TAG,
                    sequence: self.status_sequence(),
                };
                let data = if payload.is_empty() {
                    OutData::None
                } else {
                    OutData::Owned(payload)
                };
                self.queue_pdu(|bhs| nop_in.write(bhs), data, None, false, ctx);
            }
            InitiatorPdu::TaskManagement(request) => {
                if self.accept_cmd_sn(request.immediate, request.cmd_sn) {
                    self.task_management(&request, ctx);
                }
            }
            InitiatorPdu::Text(text) => {
                if !self.accept_cmd_sn(text.immediate, text.cmd_sn) {
                    return;
                }
                let answer = self.text_answer(&payload);
                let response = TextResponse {
                    final_: true,
                    continue_: false,
                    data_segment_length: answer.len() as u32,
                    lun: 0,
                    initiator_task_tag: text.initiator_task_tag,
                    target_transfer_tag: RESERVED_TAG,
                    sequence: self.status_sequence(),
                };
                let data = if answer.is_empty() {
                    OutData::None
                } else {
                    OutData::Owned(answer)
                };
                self.queue_pdu(|bhs| response.write(bhs), data, None, false, ctx);
            }
            InitiatorPdu::Logout(request) => {
                self.accept_cmd_sn(request.immediate, request.cmd_sn);
                let response = match request.reason {
                    logout::CLOSE_SESSION | logout::CLOSE_CONNECTION => 0,
                    // Connection recovery needs ErrorRecoveryLevel 2.
                    _ => 2,
                };
                self.logout = Some((request.initiator_task_tag, response));
                self.maybe_logout(ctx);
            }
            InitiatorPdu::Snack(_) => self.queue_reject(bhs, reject::COMMAND_NOT_SUPPORTED, false),
            InitiatorPdu::Login(_) => {
                self.reject_and_close(bhs, reject::PROTOCOL_ERROR, "login in full-feature phase")
            }
            InitiatorPdu::ScsiCommand(_) | InitiatorPdu::DataOut(_) => {
                debug_assert!(false, "handled by take_pdu");
            }
        }
    }

    /// The answer to a Text Request in full-feature phase: SendTargets as a discovery
    /// session answers it (this target at the portal the initiator came in through, if its
    /// host still has a VP); any other key is not understood.
    pub(super) fn text_answer(&self, text: &[u8]) -> Vec<u8> {
        let mut answer = Vec::new();
        let Ok(pairs) = crate::target::iscsi::params::parse_text(text) else {
            return answer;
        };
        let snapshot = self.published.load();
        for (key, value) in pairs {
            match (key, self.portal) {
                ("SendTargets", Some(portal)) => crate::target::iscsi::discovery::send_targets(
                    &snapshot,
                    &self.initiator,
                    &self.target_name,
                    portal,
                    value,
                    &mut answer,
                ),
                _ => crate::target::iscsi::params::push_pair(&mut answer, key, "NotUnderstood"),
            }
        }
        answer
    }

    pub(super) fn task_management(
        &mut self,
        request: &TaskManagementRequest,
        ctx: &mut SessionContext,
    ) {
        let lun = self.lun_index(request.lun);
        let response = match request.function {
            tmf::ABORT_TASK => match lun {
                Some(index) => {
                    self.drop_waits(|w| w.itt == request.referenced_task_tag);
                    if self.luns[index]
                        .scsi
                        .abort_task(request.referenced_task_tag)
                    {
                        tmf::FUNCTION_COMPLETE
                    } else {
                        tmf::TASK_DOES_NOT_EXIST
                    }
                }
                None => tmf::LUN_DOES_NOT_EXIST,
            },
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET => match lun {
                Some(index) => {
                    self.drop_waits(|w| usize::from(w.lun) == index);
                    self.luns[index].scsi.abort_all();
                    tmf::FUNCTION_COMPLETE
                }
                None => tmf::LUN_DOES_NOT_EXIST,
            },
            tmf::LOGICAL_UNIT_RESET => match lun {
                Some(index) => {
                    self.drop_waits(|w| usize::from(w.lun) == index);
                    self.luns[index].scsi.reset();
                    tmf::FUNCTION_COMPLETE
                }
                None => tmf::LUN_DOES_NOT_EXIST,
            },
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                self.drop_waits(|_| true);
                for lun in &mut self.luns {
                    lun.scsi.reset();
                }
                tmf::FUNCTION_COMPLETE
            }
            tmf::TASK_REASSIGN => tmf::REASSIGNMENT_NOT_SUPPORTED,
            _ => tmf::FUNCTION_NOT_SUPPORTED,
        };
        // Aborted tasks get no answer of their own; what they had queued is dropped.
        self.uncharge_freed();
        self.drain_done(ctx);
        let answer = TaskManagementResponse {
            response,
            initiator_task_tag: request.initiator_task_tag,
            sequence: self.status_sequence(),
        };
        let cold = request.function == tmf::TARGET_COLD_RESET;
        self.queue_pdu(|bhs| answer.write(bhs), OutData::None, None, cold, ctx);
    }

    /// Forgets the writes `matches` picks that wait for data (their tasks were aborted). A
    /// task management request is parsed only between PDUs, so none of them has data
    /// arriving into its buffer at this moment.
    pub(super) fn drop_waits(&mut self, matches: impl Fn(&DataWait) -> bool) {
        self.waits.retain(|w| !matches(w));
    }

    /// Answers a Logout once nothing is in flight and every answer has gone out.
    pub(super) fn maybe_logout(&mut self, ctx: &mut SessionContext) {
        let Some((itt, response)) = self.logout else {
            return;
        };
        let busy = !self.luns.iter().all(|lun| lun.scsi.is_idle())
            || !self.answers.is_empty()
            || !self.out_queue.is_empty()
            || self.send.is_posted();
        if busy {
            return;
        }
        self.logout = None;
        let answer = LogoutResponse {
            response,
            initiator_task_tag: itt,
            sequence: self.status_sequence(),
            time2wait: 0,
            time2retain: 0,
        };
        self.queue_pdu(|bhs| answer.write(bhs), OutData::None, None, true, ctx);
    }
}
