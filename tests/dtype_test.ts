import assert from "node:assert/strict";
import {
  bf16ToF32,
  DTYPE_SIZE,
  DTYPES,
  dtypeSize,
  f16BitsToF32Bits,
  f16ToF32,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f32ToBf16,
  f32ToF16,
  isDType,
} from "../lib/dtype.ts";

// Expected values are torch 2.13 (CPU, AVX2) outputs, generated once by running this script with
// python3 (numpy, torch); the bf16 column uses torch's scalar path (c10::BFloat16), which for
// non-NaN inputs the script asserts equal to the contiguous kernel's:
/*
import hashlib
import numpy as np
import torch

U = np.uint32


def f16(a):
    return torch.from_numpy(a.view(np.float32)).to(torch.float16).numpy().view(np.uint16)


def bf16(a):  # strided, so torch takes its scalar c10::BFloat16 path
    t = torch.from_numpy(np.stack([a, a], 1).view(np.float32))[:, 0].to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


hand = [
    0, 0x80000000, 0x3f800000, 0xbf800000, 0x477fe000, 0x477fe001, 0x477fefff, 0x477ff000,
    0x477ff001, 0x47800000, 0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00000,
    0xffc00000, 0x7f800001, 0x7fa00000, 0x7fffffff, 0xff802000, 0x33800000, 0xb3800000,
    0x33000000, 0x33000001, 0x32ffffff, 0x33c00000, 0x34200000, 0x38800000, 0x387fffff,
    0x387fe000, 0x387ff000, 0x38000000, 0x00000001, 0x80000001, 0x007fffff, 0x00800000,
    0x3f801000, 0x3f803000, 0x3f801001, 0x3f808000, 0x3f818000, 0x3f808001, 0x3f7fffff,
    0x7f7f8000, 0x7f7f7fff, 0x3dcccccd, 0x3eaaaaab, 0x40490fdb, 0x322bcc77, 0x47c35000,
    0xc2f6e979, 0x3f000000, 0x3effffff,
]
torch.manual_seed(0)
scale = torch.tensor([1e-6, 1e-4, 1e-2, 1, 10, 1e3, 3e4, 1e5] * 2)
rnd = (torch.randn(16) * scale).numpy().view(U).tolist()
xs = np.array(hand + rnd, dtype=U)
h = f16(xs.copy())
b = bf16(xs.copy())
contiguous = torch.from_numpy(xs.copy().view(np.float32)).to(torch.bfloat16)
contiguous = contiguous.view(torch.int16).numpy().view(np.uint16)
nan = (xs & 0x7fffffff) > 0x7f800000
assert (contiguous[~nan] == b[~nan]).all()
rows = [f"[0x{x:08x}, 0x{y:04x}, 0x{z:04x}]" for x, y, z in zip(xs, h, b)]
print("const F32_TO_16: [number, number, number][] = [\n  " + ",\n  ".join(rows) + ",\n];")
hs = [
    0x0000, 0x8000, 0x0001, 0x8001, 0x0200, 0x03ff, 0x0400, 0x3c00, 0x3c01, 0x7bff,
    0xfbff, 0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01, 0x7fff, 0xfd55, 0x3555, 0x0155,
]
hf = np.array(hs * 2, dtype=np.uint16).view(np.float16)
hf = torch.from_numpy(hf).to(torch.float32).numpy().view(U)[: len(hs)]
rows = [f"[0x{x:04x}, 0x{y:08x}]" for x, y in zip(hs, hf.tolist())]
print("const F16_TO_F32: [number, number][] = [\n  " + ",\n  ".join(rows) + ",\n];")
i = np.arange(1 << 20, dtype=np.uint64)
full = ((i * 0x9E3779B1) & 0xffffffff).astype(U)
near = (0x33000000 + (full % 0x14800000)).astype(U)
all16 = np.arange(65536, dtype=np.uint16)


def d(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


bf16all = torch.from_numpy(all16.view(np.int16)).view(torch.bfloat16)
print("const SHA = {")
print(f'  f16Full: "{d(f16(full.copy()))}",')
print(f'  f16Near: "{d(f16(near.copy()))}",')
print(f'  bf16Full: "{d(bf16(full.copy()))}",')
print(f'  f16ToF32: "{d(torch.from_numpy(all16.view(np.float16)).to(torch.float32).numpy())}",')
print(f'  bf16ToF32: "{d(bf16all.to(torch.float32).numpy())}",')
print("};")
*/

const F32_TO_16: [number, number, number][] = [
  [0x00000000, 0x0000, 0x0000],
  [0x80000000, 0x8000, 0x8000],
  [0x3f800000, 0x3c00, 0x3f80],
  [0xbf800000, 0xbc00, 0xbf80],
  [0x477fe000, 0x7bff, 0x4780],
  [0x477fe001, 0x7bff, 0x4780],
  [0x477fefff, 0x7bff, 0x4780],
  [0x477ff000, 0x7c00, 0x4780],
  [0x477ff001, 0x7c00, 0x4780],
  [0x47800000, 0x7c00, 0x4780],
  [0x7f7fffff, 0x7c00, 0x7f80],
  [0xff7fffff, 0xfc00, 0xff80],
  [0x7f800000, 0x7c00, 0x7f80],
  [0xff800000, 0xfc00, 0xff80],
  [0x7fc00000, 0x7e00, 0x7fc0],
  [0xffc00000, 0xfe00, 0x7fc0],
  [0x7f800001, 0x7e00, 0x7fc0],
  [0x7fa00000, 0x7f00, 0x7fc0],
  [0x7fffffff, 0x7fff, 0x7fc0],
  [0xff802000, 0xfe01, 0x7fc0],
  [0x33800000, 0x0001, 0x3380],
  [0xb3800000, 0x8001, 0xb380],
  [0x33000000, 0x0000, 0x3300],
  [0x33000001, 0x0001, 0x3300],
  [0x32ffffff, 0x0000, 0x3300],
  [0x33c00000, 0x0002, 0x33c0],
  [0x34200000, 0x0002, 0x3420],
  [0x38800000, 0x0400, 0x3880],
  [0x387fffff, 0x0400, 0x3880],
  [0x387fe000, 0x0400, 0x3880],
  [0x387ff000, 0x0400, 0x3880],
  [0x38000000, 0x0200, 0x3800],
  [0x00000001, 0x0000, 0x0000],
  [0x80000001, 0x8000, 0x8000],
  [0x007fffff, 0x0000, 0x0080],
  [0x00800000, 0x0000, 0x0080],
  [0x3f801000, 0x3c00, 0x3f80],
  [0x3f803000, 0x3c02, 0x3f80],
  [0x3f801001, 0x3c01, 0x3f80],
  [0x3f808000, 0x3c04, 0x3f80],
  [0x3f818000, 0x3c0c, 0x3f82],
  [0x3f808001, 0x3c04, 0x3f81],
  [0x3f7fffff, 0x3c00, 0x3f80],
  [0x7f7f8000, 0x7c00, 0x7f80],
  [0x7f7f7fff, 0x7c00, 0x7f7f],
  [0x3dcccccd, 0x2e66, 0x3dcd],
  [0x3eaaaaab, 0x3555, 0x3eab],
  [0x40490fdb, 0x4248, 0x4049],
  [0x322bcc77, 0x0000, 0x322c],
  [0x47c35000, 0x7c00, 0x47c3],
  [0xc2f6e979, 0xd7b7, 0xc2f7],
  [0x3f000000, 0x3800, 0x3f00],
  [0x3effffff, 0x3800, 0x3f00],
  [0xb5971b90, 0x8013, 0xb597],
  [0xb8f1aade, 0x878d, 0xb8f2],
  [0xbb24381c, 0x9922, 0xbb24],
  [0xbede255d, 0xb6f1, 0xbede],
  [0x4107cb2d, 0x483e, 0x4108],
  [0x442d0096, 0x6168, 0x442d],
  [0xc6142188, 0xf0a1, 0xc614],
  [0xc84e907c, 0xfc00, 0xc84f],
  [0x34ad0521, 0x0005, 0x34ad],
  [0xb9047862, 0x8824, 0xb904],
  [0x3b655d6f, 0x1b2b, 0x3b65],
  [0x3e9dc3bb, 0x34ee, 0x3e9e],
  [0x3f9965aa, 0x3ccb, 0x3f99],
  [0x449ab50e, 0x64d6, 0x449b],
  [0x4702df51, 0x7817, 0x4703],
  [0xc6c12fa1, 0xf609, 0xc6c1],
];
const F16_TO_F32: [number, number][] = [
  [0x0000, 0x00000000],
  [0x8000, 0x80000000],
  [0x0001, 0x33800000],
  [0x8001, 0xb3800000],
  [0x0200, 0x38000000],
  [0x03ff, 0x387fc000],
  [0x0400, 0x38800000],
  [0x3c00, 0x3f800000],
  [0x3c01, 0x3f802000],
  [0x7bff, 0x477fe000],
  [0xfbff, 0xc77fe000],
  [0x7c00, 0x7f800000],
  [0xfc00, 0xff800000],
  [0x7e00, 0x7fc00000],
  [0xfe00, 0xffc00000],
  [0x7c01, 0x7fc02000],
  [0x7fff, 0x7fffe000],
  [0xfd55, 0xffeaa000],
  [0x3555, 0x3eaaa000],
  [0x0155, 0x37aa8000],
];
const SHA = {
  f16Full: "b260641771cde1f01ae520ed7515658f60ae067f7c7a3258c194d9da80467da2",
  f16Near: "68fe17e1b74a9d61dd24cf543f382f009fc0abe8bfc5da90853439152c320442",
  bf16Full: "faa0d60a7362bce7e09b3ede520eb2c0cf1ba87e07c032d443eb6545d2be3e4f",
  f16ToF32: "b636c5716ff84d972782faf02d0194cb8951526bea4cc487082feb47b1860ddf",
  bf16ToF32: "9207d7eb28680a098c73dbe536d1ff7b94311dc417b9a385e0af6660683e93ca",
};

const hex = (x: number, w: number) => "0x" + x.toString(16).padStart(w, "0");

function f32FromBits(bits: number[]): Float32Array {
  return new Float32Array(new Uint32Array(bits).buffer);
}

async function sha256(a: ArrayBufferView): Promise<string> {
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The same 2^20 f32 patterns the generator hashes: full range, and the f16 exponent range. */
function patterns(): { full: Uint32Array; near: Uint32Array } {
  const full = new Uint32Array(1 << 20);
  const near = new Uint32Array(1 << 20);
  for (let i = 0; i < full.length; i++) {
    full[i] = Math.imul(i, 0x9e3779b1) >>> 0;
    near[i] = 0x33000000 + (full[i] % 0x14800000);
  }
  return { full, near };
}

Deno.test("DTYPE_SIZE lists every dtype with its byte size", () => {
  assert.deepEqual([...DTYPES], ["F32", "F16", "BF16", "I8", "U8", "I32", "I64"]);
  assert.deepEqual(DTYPES.map(dtypeSize), [4, 2, 2, 1, 1, 4, 8]);
  assert.equal(DTYPE_SIZE.BF16, 2);
  assert.ok(isDType("I64"));
  assert.ok(!isDType("F8_E4M3"));
  assert.ok(!isDType("f32"));
  assert.ok(!isDType("toString"));
  assert.ok(!isDType(4));
});

Deno.test("f32ToF16 matches torch on edge cases: ties, subnormals, overflow, inf, NaN", () => {
  const src = f32FromBits(F32_TO_16.map((r) => r[0]));
  const got = f32ToF16(src);
  F32_TO_16.forEach(([x, want], i) => {
    assert.equal(hex(got[i], 4), hex(want, 4), `f32 ${hex(x, 8)} → f16`);
    assert.equal(f32BitsToF16Bits(x), want);
  });
});

Deno.test("f32ToBf16 matches torch on edge cases, NaN → 0x7fc0", () => {
  const src = f32FromBits(F32_TO_16.map((r) => r[0]));
  const got = f32ToBf16(src);
  F32_TO_16.forEach(([x, , want], i) => {
    assert.equal(hex(got[i], 4), hex(want, 4), `f32 ${hex(x, 8)} → bf16`);
    assert.equal(f32BitsToBf16Bits(x), want);
  });
});

Deno.test("f16ToF32 matches torch on edge cases, signalling NaN comes back quiet", () => {
  const got = new Uint32Array(f16ToF32(new Uint16Array(F16_TO_F32.map((r) => r[0]))).buffer);
  F16_TO_F32.forEach(([h, want], i) => {
    assert.equal(hex(got[i], 8), hex(want, 8), `f16 ${hex(h, 4)} → f32`);
    assert.equal(f16BitsToF32Bits(h), want);
  });
});

Deno.test("conversions match torch over 2^20 f32 and all 65536 16-bit patterns", async () => {
  const { full, near } = patterns();
  const f32 = (u: Uint32Array) => new Float32Array(u.buffer);
  assert.equal(await sha256(f32ToF16(f32(full))), SHA.f16Full);
  assert.equal(await sha256(f32ToF16(f32(near))), SHA.f16Near);
  assert.equal(await sha256(f32ToBf16(f32(full))), SHA.bf16Full);
  const all16 = new Uint16Array(65536).map((_, i) => i);
  assert.equal(await sha256(f16ToF32(all16)), SHA.f16ToF32);
  assert.equal(await sha256(bf16ToF32(all16)), SHA.bf16ToF32);
});

Deno.test("f16 → f32 → f16 is the identity except that NaNs are quieted", () => {
  const all16 = new Uint16Array(65536).map((_, i) => i);
  const back = f32ToF16(f16ToF32(all16));
  for (let h = 0; h < 65536; h++) {
    const nan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    assert.equal(back[h], nan ? h | 0x200 : h, hex(h, 4));
  }
});

Deno.test("the scalar f32BitsToF16Bits agrees with the bulk f32ToF16 over 2^21 patterns", () => {
  for (const bits of Object.values(patterns())) {
    const bulk = f32ToF16(new Float32Array(bits.buffer));
    for (let i = 0; i < bits.length; i++) {
      const one = f32BitsToF16Bits(bits[i]);
      if (one !== bulk[i]) {
        assert.fail(`f32 ${hex(bits[i], 8)}: ${hex(one, 4)} vs ${hex(bulk[i], 4)}`);
      }
    }
  }
});

Deno.test("conversions write into a given output and respect subarray offsets", () => {
  const buf = new Float32Array([9, 1.5, -2, 9]);
  const out = new Uint16Array(4);
  assert.equal(f32ToF16(buf.subarray(1, 3), out.subarray(1)).length, 3);
  assert.deepEqual([...out], [0, 0x3e00, 0xc000, 0]);
  const back = new Float32Array(3);
  bf16ToF32(f32ToBf16(buf.subarray(1, 3)), back);
  assert.deepEqual([...back], [1.5, -2, 0]);
  assert.throws(() => f16ToF32(new Uint16Array(4), new Float32Array(3)), RangeError);
});
