// SPDX-License-Identifier: GPL-2.0
/*
 * siov_movdir64b: lets a TCG guest run code that uses MOVDIR64B.
 *
 * QEMU's TCG does not implement MOVDIR64B. With "-cpu max,+movdir64b,x-force-features=on" the
 * guest sees the CPUID bit (so the idxd driver loads), but the instruction raises #UD. This
 * module catches that #UD in kernel mode, performs the 64-byte store as eight ordered 8-byte
 * writes to the destination, and steps over the instruction. A device that assembles 8-byte
 * writes into a descriptor (siov's emulated DSA portal does) then receives what MOVDIR64B
 * would have delivered as one write. Real hardware never needs this module.
 *
 * Encoding (Intel SDM): 66 [REX] 0F 38 F8 /r, MOVDIR64B r64, m512: the register operand holds
 * the destination address, the memory operand is the 64-byte source. Only the forms the kernel
 * emits are decoded: ModRM mod=00 with a base register (no SIB, no displacement).
 */
#include <linux/io.h>
#include <linux/kdebug.h>
#include <linux/module.h>
#include <linux/notifier.h>
#include <linux/ptrace.h>
#include <linux/uaccess.h>
#include <asm/traps.h>

static unsigned long handled;
module_param(handled, ulong, 0444);
MODULE_PARM_DESC(handled, "MOVDIR64B instructions performed in software");

static unsigned long *gpr(struct pt_regs *regs, unsigned int n)
{
	switch (n) {
	case 0: return &regs->ax;
	case 1: return &regs->cx;
	case 2: return &regs->dx;
	case 3: return &regs->bx;
	case 4: return &regs->sp;
	case 5: return &regs->bp;
	case 6: return &regs->si;
	case 7: return &regs->di;
	case 8: return &regs->r8;
	case 9: return &regs->r9;
	case 10: return &regs->r10;
	case 11: return &regs->r11;
	case 12: return &regs->r12;
	case 13: return &regs->r13;
	case 14: return &regs->r14;
	case 15: return &regs->r15;
	}
	return NULL;
}

static int siov_movdir64b_trap(struct notifier_block *nb, unsigned long action, void *data)
{
	struct die_args *args = data;
	struct pt_regs *regs = args->regs;
	u8 insn[6];
	unsigned int len = 0, rex = 0, modrm, reg, rm, i;
	u64 src[8];
	void __iomem *dst;

	if (action != DIE_TRAP || args->trapnr != X86_TRAP_UD || user_mode(regs))
		return NOTIFY_DONE;
	if (copy_from_kernel_nofault(insn, (void *)regs->ip, sizeof(insn)))
		return NOTIFY_DONE;
	if (insn[len++] != 0x66)
		return NOTIFY_DONE;
	if ((insn[len] & 0xf0) == 0x40)
		rex = insn[len++];
	if (insn[len] != 0x0f || insn[len + 1] != 0x38 || insn[len + 2] != 0xf8)
		return NOTIFY_DONE;
	len += 3;
	modrm = insn[len++];
	reg = ((modrm >> 3) & 7) | ((rex & 4) ? 8 : 0);
	rm = (modrm & 7) | ((rex & 1) ? 8 : 0);
	if ((modrm >> 6) != 0 || (modrm & 7) == 4 || (modrm & 7) == 5)
		return NOTIFY_DONE;
	if (copy_from_kernel_nofault(src, (void *)*gpr(regs, rm), sizeof(src)))
		return NOTIFY_DONE;
	dst = (void __iomem *)*gpr(regs, reg);
	/* In order, lowest address first: the device assembles the descriptor as it comes. */
	for (i = 0; i < 8; i++)
		writeq(src[i], dst + 8 * i);
	regs->ip += len;
	handled++;
	return NOTIFY_STOP;
}

static struct notifier_block siov_movdir64b_nb = {
	.notifier_call = siov_movdir64b_trap,
	.priority = INT_MAX,
};

static int __init siov_movdir64b_init(void)
{
	pr_info("siov_movdir64b: MOVDIR64B #UD handler installed (TCG lacks the instruction)\n");
	return register_die_notifier(&siov_movdir64b_nb);
}

static void __exit siov_movdir64b_exit(void)
{
	unregister_die_notifier(&siov_movdir64b_nb);
}

module_init(siov_movdir64b_init);
module_exit(siov_movdir64b_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Software MOVDIR64B for TCG guests (siov guest test)");
