/* cryo's batch routine (src/cryo/engine/inject.py, Injector.batch): runs a table of
 * system calls in a stopped task, then stops once; if the task runs on untraced (its
 * tracer died), it puts every register back and jumps to where the task was.
 * Position independent; all addresses rip-relative to the region it starts.
 *
 * Region (REGION bytes, at the end of the scratch mapping):
 *   0x000 code        0x1c0..0x200 private stack (for popfq)
 *   0x200 resume      a user_regs_struct: the registers to go back to
 *   0x300 header      q0 count, q1 done (out: entries run without error), q2 stop signal
 *   0x320 entries     64 bytes each: q0 nr | may_fail << 16 | ref_arg << 24 | ref << 32,
 *                     q1..q6 args, q7 result (out); ref_arg 1..6: that argument is the
 *                     result of entry ref (an earlier one)
 * Assembled once with `as batch.S -o batch.o && objdump -d batch.o`; inject.py holds
 * the bytes. */
        .text
        .globl entry
entry:
        lea     header(%rip), %r12
        mov     (%r12), %r13            /* count */
        lea     32(%r12), %r15          /* the current entry */
        xor     %r14d, %r14d            /* its index */
next:
        cmp     %r13, %r14
        jae     done
        movzbl  3(%r15), %ecx           /* ref_arg */
        test    %ecx, %ecx
        jz      noref
        movzwl  4(%r15), %edx           /* ref: an earlier entry's result */
        shl     $6, %rdx
        mov     32+56(%r12,%rdx), %rdx
        mov     %rdx, (%r15,%rcx,8)
noref:
        movzwl  (%r15), %eax
        mov     8(%r15), %rdi
        mov     16(%r15), %rsi
        mov     24(%r15), %rdx
        mov     32(%r15), %r10
        mov     40(%r15), %r8
        mov     48(%r15), %r9
        syscall
        mov     %rax, 56(%r15)
        cmp     $-4095, %rax
        jb      ok                      /* below -4095 unsigned: not an error */
        testb   $1, 2(%r15)             /* may_fail */
        jz      done
ok:
        inc     %r14
        add     $64, %r15
        jmp     next
done:
        mov     %r14, 8(%r12)
        mov     $39, %eax               /* getpid (as the task sees it) */
        syscall
        mov     %rax, %rbx
        mov     $186, %eax              /* gettid */
        syscall
        mov     %rax, %rsi
        mov     %rbx, %rdi
        mov     16(%r12), %rdx          /* the stop signal: one the task ignores */
        mov     $234, %eax              /* tgkill: the one stop cryo waits for */
        syscall
        .globl back
back:   /* cryo stops the task here (rip == back); it goes on only without cryo */
        lea     stack_top(%rip), %rsp
        pushq   resume+144(%rip)        /* eflags */
        popfq
        mov     resume+0(%rip), %r15
        mov     resume+8(%rip), %r14
        mov     resume+16(%rip), %r13
        mov     resume+24(%rip), %r12
        mov     resume+32(%rip), %rbp
        mov     resume+40(%rip), %rbx
        mov     resume+48(%rip), %r11
        mov     resume+56(%rip), %r10
        mov     resume+64(%rip), %r9
        mov     resume+72(%rip), %r8
        mov     resume+80(%rip), %rax
        mov     resume+88(%rip), %rcx
        mov     resume+96(%rip), %rdx
        mov     resume+104(%rip), %rsi
        mov     resume+112(%rip), %rdi
        mov     resume+152(%rip), %rsp
        jmp     *resume+128(%rip)       /* rip */
        .org    0x200
stack_top:
resume:
        .org    0x300
header:
