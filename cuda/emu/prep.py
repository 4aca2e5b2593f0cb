"""Rewrites a cuda/*.cu file into C++ for the CPU emulation (cuda/emu/emu.h):
  kernel<<<grid, block, smem, stream>>>(args)  ->  emu::launcher(grid, block, smem, stream).run(kernel, args)
  extern __shared__ __align__(16) T name[];     ->  T *name = static_cast<T *>(emu::dynamic_smem());
Fails loudly if a launch or a dynamic shared declaration is left unconverted.
Usage: python3 cuda/emu/prep.py in.cu out.cc"""
import re
import sys

src = open(sys.argv[1]).read()
launch = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)<<<(.*?)>>>\(", re.S)
src, n_launch = launch.subn(lambda m: "emu::launcher(%s).run(%s, " % (m.group(2), m.group(1)), src)
shared = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\[\];")
src = shared.sub(lambda m: "%s *%s = static_cast<%s *>(emu::dynamic_smem());" % (m.group(1), m.group(2), m.group(1)), src)
if "<<<" in src or "extern __shared__" in src:
    sys.exit("prep.py: %s: unconverted launch or shared declaration" % sys.argv[1])
open(sys.argv[2], "w").write('#line 1 "%s"\n' % sys.argv[1] + src)
print("%s: %d launches" % (sys.argv[1], n_launch), file=sys.stderr)
