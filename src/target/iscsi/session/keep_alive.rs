//! Keep-alive: a NOP-In to an initiator silent for `ISCSI_NOP_INTERVAL_SECS`, the session
//! ended when it goes unanswered for `ISCSI_NOP_TIMEOUT_SECS` or when a reinstating login
//! or a host change asks it to close.

use super::*;

impl IscsiSession {
    pub(super) fn post_tick(&mut self, ctx: &mut SessionContext) {
        if self.tick.is_posted() || self.closing {
            return;
        }
        // SAFETY: the tick is this session's, and the session outlives the entry: the reactor
        // drops a session only when is_finished(), with nothing on the ring.
        let posted = unsafe { self.tick.post(ctx, TAG_TICK, &mut self.ring_pending) };
        if let Err(error) = posted {
            self.close(&format!("cannot post the keep-alive timer: {error}"));
        }
    }

    pub(super) fn on_tick(&mut self, ctx: &mut SessionContext) {
        self.tick.fired();
        if self.closing {
            return;
        }
        if self.entry.close_requested() {
            self.close("ended by a new login of its initiator, or by its host's VPs changing");
            return;
        }
        self.idle_ticks = self.idle_ticks.saturating_add(1);
        match self.nop_pending {
            Some(ticks) if ticks + 1 >= ISCSI_NOP_TIMEOUT_SECS => {
                self.close("the initiator did not answer a NOP-In");
                return;
            }
            Some(ticks) => self.nop_pending = Some(ticks + 1),
            None if self.idle_ticks >= ISCSI_NOP_INTERVAL_SECS => {
                let ttt = self.next_ttt;
                self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
                let nop = NopIn {
                    data_segment_length: 0,
                    lun: 0,
                    initiator_task_tag: RESERVED_TAG,
                    target_transfer_tag: ttt,
                    sequence: self.plain_sequence(),
                };
                self.nop_pending = Some(0);
                self.idle_ticks = 0;
                self.queue_pdu(|bhs| nop.write(bhs), OutData::None, None, false, ctx);
                self.post_send(ctx);
            }
            None => {}
        }
        self.post_tick(ctx);
    }
}
