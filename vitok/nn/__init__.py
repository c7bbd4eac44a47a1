"""Plain building blocks: attention, SwiGLU, 3D rotary positions, tubelet patchify, transformer blocks."""
