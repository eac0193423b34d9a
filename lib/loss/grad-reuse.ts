/**
 * Bookkeeping for LossCallOptions.gradOutReuse: what each caller-owned gradient buffer holds between calls, so
 * a call can tell the backend (one GRAD_STATE per layer) and the backend can leave alone the zeros an earlier
 * call wrote (native/core/gradient_write.h has the write contract).
 *
 * Wrong results are prevented by construction where this module can see the cause:
 *  - a record belongs to a byte range of an ArrayBuffer, not to a view object, so two views of the same memory
 *    share it; a view that overlaps a record without matching it exactly drops that record (full write);
 *  - a record keeps the layer shape and attentionResolution it was written with; any change means a full write;
 *  - a call that fails, or that ran while another call wrote the same buffer, leaves the state unknown;
 *  - a reuse call on a buffer that a pending async call is still writing is refused (TypeError).
 * What it cannot see is JavaScript writing into a buffer between calls: the contract in types.ts forbids it.
 */
import { GRAD_STATE, type GradStateValue, type NativeLayer } from './native-types';

interface GradRecord {
  byteOffset: number;
  byteLength: number;
  state: GradStateValue;
  r0: number;
  heads: number;
  resolution: number;
  /** Calls writing this range now. */
  busy: number;
  /** Another call wrote the range while one was running: the end state is unknown. */
  spoiled: boolean;
}

const RECORDS = new WeakMap<ArrayBufferLike, GradRecord[]>();

/** The buffers of one call: their prior states for the backend, and settle() to record what it left. */
export interface GradOutLease {
  /** One GRAD_STATE per layer for the backend, or null (write every buffer in full). */
  priors: Uint8Array | null;
  /** After the call: the states the backend reports, or null when it failed. */
  settle(states: readonly GradStateValue[] | null): void;
}

/**
 * The record of exactly this view's bytes (if any) and whether a pending call is writing any of them. Records it
 * merely overlaps are dropped: this call rewrites part of their memory.
 */
function lookup(view: Float32Array): { record: GradRecord; busy: boolean } {
  const list = RECORDS.get(view.buffer) ?? [];
  const start = view.byteOffset;
  const end = start + view.byteLength;
  const overlapping = list.filter((r) => r.byteOffset < end && start < r.byteOffset + r.byteLength);
  const busy = overlapping.some((r) => r.busy > 0);
  let record = overlapping.find((r) => r.byteOffset === start && r.byteLength === view.byteLength);
  const kept = list.filter((r) => r === record || !overlapping.includes(r));
  if (!record) {
    record = { byteOffset: start, byteLength: view.byteLength, state: GRAD_STATE.unknown, r0: 0, heads: 0, resolution: 0, busy: 0, spoiled: false };
    kept.push(record);
  }
  RECORDS.set(view.buffer, kept);
  return { record, busy };
}

/**
 * Takes gradOut for one call with object resolution r0. With reuse, throws a TypeError when a pending call is
 * still writing one of the buffers (before marking anything).
 */
export function acquireGradOut(gradOut: Float32Array[], layers: NativeLayer[], r0: number, reuse: boolean): GradOutLease {
  const found = gradOut.map(lookup);
  if (reuse) {
    found.forEach(({ busy }, i) => {
      if (busy) {
        throw new TypeError(
          `gradOut[${i}] is still being written by a pending attentionLossAsync call; await it before passing the buffer again with gradOutReuse`,
        );
      }
    });
  }
  const records = found.map(({ record }) => record);
  const priors = reuse ? new Uint8Array(records.length) : null;
  found.forEach(({ record: r, busy }, i) => {
    const same = r.r0 === r0 && r.heads === layers[i].heads && r.resolution === layers[i].resolution;
    if (priors) priors[i] = same && !r.spoiled ? r.state : GRAD_STATE.unknown;
    if (busy) r.spoiled = true;
    r.busy++;
  });
  return {
    priors,
    settle(states) {
      records.forEach((r, i) => {
        r.busy--;
        const known = states !== null && !r.spoiled;
        Object.assign(r, known ? { state: states[i], r0, heads: layers[i].heads, resolution: layers[i].resolution } : { state: GRAD_STATE.unknown });
        if (r.busy === 0) r.spoiled = false;
      });
    },
  };
}
