/* Test program for libsiov_portal.so: stores to WQ portals with MOVDIR64B and ENQCMD in
 * several addressing modes, under LD_PRELOAD, against the test's fake broker.
 *
 * usage: portal_prog N_POSTED N_ENQ [segv|fork]
 * prints "enq ok=A retry=B" and exits 0; with "segv" it then writes to a bad address (the
 * library must pass a fault that is not a portal store on to the default action); with
 * "fork" a child stores to the portal (it has none: it must die of SIGSEGV) and the parent
 * prints "child signal N".
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct desc {
	uint32_t seq;
	uint32_t mode;
	uint8_t fill[56];
} __attribute__((aligned(64)));

static struct desc rip_desc __attribute__((used));
static struct desc table[8];

static void fill(struct desc *d, uint32_t seq, uint32_t mode)
{
	d->seq = seq;
	d->mode = mode;
	for (int i = 0; i < 56; i++)
		d->fill[i] = (uint8_t)(seq * 7 + i);
}

static void *open_portal(const char *dir, const char *name)
{
	char path[512];
	void *p;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDWR);
	if (fd < 0) {
		perror(path);
		exit(2);
	}
	p = mmap(NULL, 0x1000, PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

int main(int argc, char **argv)
{
	const char *dir = getenv("SIOV_PORTAL_DEVDIR");
	long posted = argc > 1 ? atol(argv[1]) : 0, enq = argc > 2 ? atol(argv[2]) : 0;
	long ok = 0, retry = 0;
	char *dwq = open_portal(dir, "wq0.0"), *swq = open_portal(dir, "wq0.1");
	struct desc d;

	for (long i = 0; i < posted; i++) {
		uint32_t mode = (uint32_t)(i % 6);
		switch (mode) {
		case 0: /* base register, no displacement */
			fill(&d, (uint32_t)i, mode);
			__asm__ volatile("sfence\n\tmovdir64b (%1), %0" ::"D"(dwq), "S"(&d) : "memory");
			break;
		case 1: { /* REX.R/X/B, SIB with scale 2, disp8 */
			register char *dst __asm__("r11") = dwq;
			register char *base __asm__("r9") = (char *)((uintptr_t)&table[0] - 0x40);
			register long idx __asm__("r10") = 32; /* 32 * 2 = 64: table[1] */
			fill(&table[1], (uint32_t)i, mode);
			__asm__ volatile("movdir64b 0x40(%1,%2,2), %0" ::"r"(dst), "r"(base), "r"(idx)
					 : "memory");
			break;
		}
		case 2: { /* disp32 */
			char *base = (char *)((uintptr_t)&table[2] - 0x1000);
			fill(&table[2], (uint32_t)i, mode);
			__asm__ volatile("movdir64b 0x1000(%1), %0" ::"d"(dwq + 0x40), "a"(base)
					 : "memory");
			break;
		}
		case 3: /* RIP-relative */
			fill(&rip_desc, (uint32_t)i, mode);
			__asm__ volatile("movdir64b rip_desc(%%rip), %0" ::"c"(dwq + 0x80) : "memory");
			break;
		case 4: { /* r12 base: needs a SIB byte */
			register char *base __asm__("r12") = (char *)&table[4];
			fill(&table[4], (uint32_t)i, mode);
			__asm__ volatile("movdir64b (%1), %0" ::"D"(dwq), "r"(base) : "memory");
			break;
		}
		default: { /* r13 base: mod=01 with a zero disp8 (mod=00 would mean RIP) */
			register char *base __asm__("r13") = (char *)&table[5];
			register char *dst __asm__("r8") = dwq + 0xfc0;
			fill(&table[5], (uint32_t)i, mode);
			__asm__ volatile("movdir64b (%1), %0" ::"r"(dst), "r"(base) : "memory");
			break;
		}
		}
	}
	for (long i = 0; i < enq; i++) {
		unsigned char zf;
		fill(&d, (uint32_t)i, 100);
		__asm__ volatile("sfence\n\tenqcmd (%2), %1\n\tsetz %0"
				 : "=r"(zf)
				 : "r"(swq), "r"(&d)
				 : "memory", "cc");
		if (zf)
			retry++;
		else
			ok++;
	}
	printf("enq ok=%ld retry=%ld\n", ok, retry);
	fflush(stdout);
	if (argc > 3 && strcmp(argv[3], "segv") == 0)
		*(volatile int *)(uintptr_t)strtoul("16", NULL, 0) = 1;
	if (argc > 3 && strcmp(argv[3], "fork") == 0) {
		int status;
		pid_t pid = fork();
		if (pid == 0) {
			fill(&d, 999, 0);
			__asm__ volatile("movdir64b (%1), %0" ::"D"(dwq), "S"(&d) : "memory");
			_exit(0);
		}
		waitpid(pid, &status, 0);
		printf("child signal %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	}
	return 0;
}
