/**
 * Minimal NumPy .npy (format 1.0/2.0/3.0) reader and writer for float32/float64/int32/int64/uint8 C-order arrays.
 * Used for fixtures written by tools/ (PyTorch) and for user-supplied initial latents.
 */
import * as fs from 'node:fs';

export type NpyDtype = 'float32' | 'float64' | 'int32' | 'int64' | 'uint8';
export type NpyData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

export interface NpyArray {
  dtype: NpyDtype;
  shape: number[];
  data: NpyData;
}

const DESCR_TO_DTYPE: Record<string, NpyDtype> = {
  '<f4': 'float32',
  '<f8': 'float64',
  '<i4': 'int32',
  '<i8': 'int64',
  '|u1': 'uint8',
  '<u1': 'uint8',
};
const DTYPE_TO_DESCR: Record<NpyDtype, string> = {
  float32: '<f4',
  float64: '<f8',
  int32: '<i4',
  int64: '<i8',
  uint8: '|u1',
};
const BYTES: Record<NpyDtype, number> = { float32: 4, float64: 8, int32: 4, int64: 8, uint8: 1 };

/** Parses an .npy buffer. Throws an Error naming `source` when the file is not a supported .npy. */
export function parseNpy(buf: Buffer, source = '<buffer>'): NpyArray {
  if (buf.length < 10 || buf.readUInt32BE(0) !== 0x934e554d || buf.toString('latin1', 4, 6) !== 'PY') {
    throw new Error(`${source}: not a .npy file (bad magic)`);
  }
  const major = buf[6];
  let headerLen: number;
  let offset: number;
  if (major === 1) {
    headerLen = buf.readUInt16LE(8);
    offset = 10;
  } else if (major === 2 || major === 3) {
    headerLen = buf.readUInt32LE(8);
    offset = 12;
  } else {
    throw new Error(`${source}: unsupported .npy version ${major}`);
  }
  const header = buf.toString(major === 3 ? 'utf8' : 'latin1', offset, offset + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new Error(`${source}: malformed .npy header: ${header.trim()}`);
  }
  if (fortran === 'True') throw new Error(`${source}: Fortran-order arrays are not supported; save with np.ascontiguousarray`);
  const dtype = DESCR_TO_DTYPE[descr];
  if (!dtype) throw new Error(`${source}: unsupported dtype ${descr} (expected one of ${Object.keys(DESCR_TO_DTYPE).join(', ')})`);
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const start = offset + headerLen;
  const byteLength = count * BYTES[dtype];
  if (buf.length < start + byteLength) {
    throw new Error(`${source}: truncated .npy (needs ${byteLength} data bytes, has ${buf.length - start})`);
  }
  // Copy into a fresh, aligned ArrayBuffer (Buffer views can have any byteOffset).
  const bytes = new Uint8Array(byteLength);
  bytes.set(buf.subarray(start, start + byteLength));
  const ab = bytes.buffer;
  let data: NpyData;
  switch (dtype) {
    case 'float32':
      data = new Float32Array(ab);
      break;
    case 'float64':
      data = new Float64Array(ab);
      break;
    case 'int32':
      data = new Int32Array(ab);
      break;
    case 'int64':
      data = new BigInt64Array(ab);
      break;
    case 'uint8':
      data = bytes;
      break;
  }
  return { dtype, shape, data };
}

export function readNpy(file: string): NpyArray {
  return parseNpy(fs.readFileSync(file), file);
}

/** Room for any .npy header numpy writes (format 1.0 caps it at 65535 bytes). */
export const NPY_MAX_HEADER_BYTES = 12 + 65535;

/**
 * Reads a file that must be a regular file of at most `maxBytes`, without ever blocking on it: a FIFO or a
 * device (/dev/zero, a terminal) is refused before any read (O_NONBLOCK keeps even the open of a FIFO from
 * waiting for a writer), and a file larger than the bound is refused from its size, so a wrong path can neither
 * hang the process nor fill its memory. Throws an Error with the errno code, or a RangeError naming `what`.
 */
export function readBoundedFile(file: string, maxBytes: number, what: string): Buffer {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) {
      const kind = stat.isFIFO()
        ? 'a FIFO'
        : stat.isCharacterDevice()
          ? 'a character device'
          : stat.isBlockDevice()
            ? 'a block device'
            : stat.isSocket()
              ? 'a socket'
              : stat.isDirectory()
                ? 'a folder'
                : 'not a regular file';
      throw new RangeError(`${what}: ${file} is ${kind}; pass a regular .npy file`);
    }
    if (stat.size > maxBytes) {
      throw new RangeError(`${what}: ${file} has ${stat.size} bytes, more than the ${maxBytes} the expected array can take`);
    }
    const buf = Buffer.alloc(stat.size);
    let at = 0;
    while (at < buf.length) {
      const n = fs.readSync(fd, buf, at, buf.length - at, at);
      if (n === 0) break;
      at += n;
    }
    return buf.subarray(0, at);
  } finally {
    fs.closeSync(fd);
  }
}

function dtypeOf(data: NpyData): NpyDtype {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof BigInt64Array) return 'int64';
  return 'uint8';
}

/** Serialises a C-order array as .npy version 1.0. */
export function encodeNpy(data: NpyData, shape: number[]): Buffer {
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw new RangeError(`encodeNpy: shape [${shape.join(', ')}] holds ${count} values but data has ${data.length}`);
  const dtype = dtypeOf(data);
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${DTYPE_TO_DESCR[dtype]}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const total = 10 + header.length + 1;
  header += `${' '.repeat((64 - (total % 64)) % 64)}\n`;
  const head = Buffer.alloc(10);
  head.writeUInt32BE(0x934e554d, 0);
  head.write('PY', 4, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]);
}

export function writeNpy(file: string, data: NpyData, shape: number[]): void {
  fs.writeFileSync(file, encodeNpy(data, shape));
}
