# switch.S: the fiber context switch (x86-64 System V). emu_switch(save, load) saves the
# callee-saved registers and the stack pointer of the running context into *save and resumes the
# context whose stack pointer is `load`. No system call: about 10-30 ns per switch.
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch

# First frame of a new fiber: r12 = argument, r13 = entry function (never returns).
    .globl emu_fiber_trampoline
    .hidden emu_fiber_trampoline
    .type emu_fiber_trampoline, @function
emu_fiber_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_trampoline, .-emu_fiber_trampoline
    .section .note.GNU-stack,"",@progbits
