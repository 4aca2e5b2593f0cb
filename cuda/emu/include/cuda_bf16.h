/* Shadows the CUDA header for the CPU emulation (cuda/emu/emu.h). */
#include "../emu.h"
