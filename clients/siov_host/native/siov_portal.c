/* siov_portal: LD_PRELOAD trap-and-emulate of DSA WQ portals for siov.
 *
 * open()/openat() of /dev/dsa/wqD.Q connects to the broker named by $SIOV_PORTAL_SOCKET and
 * sends it an OPEN with this process's own /proc/self/mem (O_RDWR) and /proc/self/maps
 * (O_RDONLY): the consent for the device to reach this address space (SVA).  The returned
 * file descriptor is that connection.  mmap() of it gives a PROT_NONE page; a MOVDIR64B
 * (66 [REX] 0F 38 F8 /r) or ENQCMD (F2 [REX] 0F 38 F8 /r) aimed at it traps (SIGSEGV on the
 * page, or SIGILL on a CPU without the instruction), the handler decodes the ModRM/SIB
 * operands from the saved registers, forwards the 64-byte source to the broker in program
 * order, sets ZF from the broker's answer for ENQCMD (1 = retry), and steps over the
 * instruction.  close() of the fd (or exit) closes the connection: the broker closes the WQ.
 *
 * Broker messages (little endian): u32 type, u32 payload length, payload.
 *   1 OPEN   {u32 device index, u32 wq index} + 2 fds -> {i32 errno, u32 pasid, u32 mode, u32 size}
 *   2 POSTED {64-byte descriptor}                     -> nothing (MOVDIR64B is a posted write)
 *   3 ENQ    {64-byte descriptor}                     -> {i32 errno, u32 result} (0 ok, 1 retry)
 *
 * Written for siov; the instruction encodings are the Intel SDM's, the char-device rules
 * (one 4 KiB portal page per mmap) follow drivers/dma/idxd/cdev.c.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <ucontext.h>
#include <unistd.h>
#include <asm/prctl.h>

#define MAX_WQ_FDS 256
#define MAX_PORTALS 256
#define PORTAL_SIZE 4096

enum { MSG_OPEN = 1, MSG_POSTED = 2, MSG_ENQ = 3 };

struct wq_fd {
	int fd;          /* -1: free */
	int shared;
};

struct portal {
	uintptr_t start; /* 0: free */
	size_t len;
	int fd;
	pid_t pid; /* the process that mapped it: a child of fork() inherits the table, not the page */
};

static struct wq_fd wq_fds[MAX_WQ_FDS];
static struct portal portals[MAX_PORTALS];
static volatile int table_lock;
static volatile int send_lock;
static int handlers_installed;
static struct sigaction old_segv, old_ill;
static unsigned long stat_posted, stat_enq;

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_munmap)(void *, size_t);

static void lock(volatile int *l)
{
	while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
		;
}

static void unlock(volatile int *l)
{
	__atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void siov_portal_init(void)
{
	real_open = dlsym(RTLD_NEXT, "open");
	real_openat = dlsym(RTLD_NEXT, "openat");
	real_close = dlsym(RTLD_NEXT, "close");
	real_mmap = dlsym(RTLD_NEXT, "mmap");
	real_munmap = dlsym(RTLD_NEXT, "munmap");
	for (int i = 0; i < MAX_WQ_FDS; i++)
		wq_fds[i].fd = -1;
}

static void resolve(void)
{
	if (!real_open)
		siov_portal_init();
}

/* ---- the WQ char device: open/close ------------------------------------------------------ */

static const char *dev_dir(void)
{
	const char *d = getenv("SIOV_PORTAL_DEVDIR");
	return d && *d ? d : "/dev/dsa";
}

/* "/dev/dsa/wq0.1" (or "wq0.1-name"): device and WQ index; 0 if not a WQ char device */
static int parse_wq_path(const char *path, unsigned *dev, unsigned *wq)
{
	const char *dir = dev_dir();
	size_t n = strlen(dir);
	char tail;

	if (!path || strncmp(path, dir, n) != 0 || path[n] != '/')
		return 0;
	path += n + 1;
	if (sscanf(path, "wq%u.%u%c", dev, wq, &tail) == 2)
		return 1;
	return sscanf(path, "wq%u.%u%c", dev, wq, &tail) == 3 && tail == '-';
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int wq_open(unsigned dev, unsigned wq, int flags)
{
	const char *sock_path = getenv("SIOV_PORTAL_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint32_t req[4] = { MSG_OPEN, 8, dev, wq };
	int32_t reply[4];
	int fds[2], s, saved;
	char cbuf[CMSG_SPACE(sizeof(fds))];
	struct iovec iov = { .iov_base = req, .iov_len = sizeof(req) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm;

	if (!sock_path || strlen(sock_path) >= sizeof(sa.sun_path)) {
		errno = ENODEV;
		return -1;
	}
	strcpy(sa.sun_path, sock_path);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		saved = errno;
		real_close(s);
		errno = saved == ENOENT ? ENODEV : saved;
		return -1;
	}
	fds[0] = real_open("/proc/self/mem", O_RDWR | O_CLOEXEC);
	fds[1] = real_open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fds[0] < 0 || fds[1] < 0) {
		saved = errno;
		if (fds[0] >= 0)
			real_close(fds[0]);
		if (fds[1] >= 0)
			real_close(fds[1]);
		real_close(s);
		errno = saved;
		return -1;
	}
	memset(cbuf, 0, sizeof(cbuf));
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	saved = sendmsg(s, &msg, MSG_NOSIGNAL) == (ssize_t)sizeof(req) ? 0 : EIO;
	real_close(fds[0]);
	real_close(fds[1]);
	if (saved || read_all(s, reply, sizeof(reply)) < 0) {
		real_close(s);
		errno = saved ? saved : EIO;
		return -1;
	}
	if (reply[0]) {
		real_close(s);
		errno = reply[0];
		return -1;
	}
	if (flags & O_CLOEXEC)
		fcntl(s, F_SETFD, FD_CLOEXEC);
	else
		fcntl(s, F_SETFD, 0);
	lock(&table_lock);
	for (int i = 0; i < MAX_WQ_FDS; i++) {
		if (wq_fds[i].fd < 0) {
			wq_fds[i].fd = s;
			wq_fds[i].shared = reply[2] == 1;
			unlock(&table_lock);
			return s;
		}
	}
	unlock(&table_lock);
	real_close(s);
	errno = EMFILE;
	return -1;
}

static struct wq_fd *find_fd(int fd)
{
	for (int i = 0; i < MAX_WQ_FDS; i++)
		if (wq_fds[i].fd == fd && fd >= 0)
			return &wq_fds[i];
	return NULL;
}

static int maybe_wq_open(const char *path, int flags, int *handled)
{
	unsigned dev, wq;
	struct stat st;

	*handled = 0;
	if (!parse_wq_path(path, &dev, &wq) || !getenv("SIOV_PORTAL_SOCKET"))
		return -1;
	*handled = 1;
	if (stat(path, &st) < 0)
		return -1; /* errno from stat: ENOENT for a WQ without a char device */
	return wq_open(dev, wq, flags);
}

static int mode_arg(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE ? va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
	int handled, fd, mode;
	va_list ap;

	resolve();
	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	fd = maybe_wq_open(path, flags, &handled);
	if (handled)
		return fd;
	return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int __open_2(const char *path, int flags)
{
	return open(path, flags);
}

int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));

int openat(int dirfd, const char *path, int flags, ...)
{
	int handled, fd, mode;
	va_list ap;

	resolve();
	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	if (path[0] == '/') {
		fd = maybe_wq_open(path, flags, &handled);
		if (handled)
			return fd;
	}
	return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

int __openat_2(int dirfd, const char *path, int flags)
{
	return openat(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags) __attribute__((alias("__openat_2")));

int close(int fd)
{
	struct wq_fd *w;

	resolve();
	lock(&table_lock);
	w = find_fd(fd);
	if (w) {
		w->fd = -1;
		for (int i = 0; i < MAX_PORTALS; i++)
			if (portals[i].start && portals[i].fd == fd)
				portals[i].fd = -1; /* the mapping stays; stores to it now fault */
	}
	unlock(&table_lock);
	return real_close(fd);
}

/* ---- the portal: mmap/munmap and the trap ------------------------------------------------ */

static void trap(int sig, siginfo_t *info, void *ctx);

static void install_handlers(void)
{
	struct sigaction sa;

	if (__atomic_exchange_n(&handlers_installed, 1, __ATOMIC_ACQ_REL))
		return;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = trap;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, &old_segv);
	sigaction(SIGILL, &sa, &old_ill);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	void *p;

	resolve();
	lock(&table_lock);
	if (!find_fd(fd)) {
		unlock(&table_lock);
		return real_mmap(addr, len, prot, flags, fd, off);
	}
	unlock(&table_lock);
	/* cdev.c idxd_cdev_mmap: one page, shared, not executable */
	if (len == 0 || len > PORTAL_SIZE || off != 0 || !(flags & MAP_SHARED) ||
	    (prot & PROT_EXEC)) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	p = real_mmap(addr, PORTAL_SIZE, PROT_NONE,
		      MAP_PRIVATE | MAP_ANONYMOUS | (flags & MAP_FIXED), -1, 0);
	if (p == MAP_FAILED)
		return p;
	/* cdev.c maps the portal VM_DONTCOPY: a child of fork() has no portal (its stores fault) */
	madvise(p, PORTAL_SIZE, MADV_DONTFORK);
	install_handlers();
	lock(&table_lock);
	for (int i = 0; i < MAX_PORTALS; i++) {
		if (!portals[i].start) {
			portals[i].start = (uintptr_t)p;
			portals[i].len = PORTAL_SIZE;
			portals[i].fd = fd;
			portals[i].pid = (pid_t)syscall(SYS_getpid);
			unlock(&table_lock);
			return p;
		}
	}
	unlock(&table_lock);
	real_munmap(p, PORTAL_SIZE);
	errno = ENOMEM;
	return MAP_FAILED;
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

int munmap(void *addr, size_t len)
{
	resolve();
	lock(&table_lock);
	for (int i = 0; i < MAX_PORTALS; i++)
		if (portals[i].start && portals[i].start >= (uintptr_t)addr &&
		    portals[i].start < (uintptr_t)addr + len)
			portals[i].start = 0;
	unlock(&table_lock);
	return real_munmap(addr, len);
}

/* the portal (and its fd) that contains addr; fd -1 when closed */
static struct portal *find_portal(uintptr_t addr)
{
	pid_t self = (pid_t)syscall(SYS_getpid);

	for (int i = 0; i < MAX_PORTALS; i++)
		if (portals[i].start && portals[i].pid == self && addr >= portals[i].start &&
		    addr < portals[i].start + portals[i].len)
			return &portals[i];
	return NULL;
}

/* x86-64 register number (ModRM/SIB encoding, REX-extended) -> gregs index */
static const int greg_of[16] = {
	REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
	REG_R8,  REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15,
};

enum { INSN_MOVDIR64B = 1, INSN_ENQCMD = 2, INSN_ENQCMDS = 3 };

struct insn {
	int kind;
	int len;
	uint64_t dst; /* the register operand: the portal address */
	uint64_t src; /* the m512 operand: the descriptor */
};

static uint64_t seg_base(int which)
{
	unsigned long base = 0;

	syscall(SYS_arch_prctl, which, &base);
	return base;
}

/* Decode MOVDIR64B/ENQCMD(S) at ip; 0 on success.  Exposed for the unit test. */
int siov_portal_decode(const uint8_t *ip, const greg_t *gregs, struct insn *out)
{
	int i = 0, p66 = 0, pf2 = 0, pf3 = 0, p67 = 0, seg = 0, mod, rm, reg, rip_rel = 0;
	uint8_t rex = 0, modrm;
	uint64_t addr = 0;
	int32_t disp = 0;

	for (;; i++) {
		uint8_t b = ip[i];
		if (i > 10)
			return -1;
		if (b == 0x66)
			p66 = 1;
		else if (b == 0xf2)
			pf2 = 1;
		else if (b == 0xf3)
			pf3 = 1;
		else if (b == 0x67)
			p67 = 1;
		else if (b == 0x64)
			seg = ARCH_GET_FS;
		else if (b == 0x65)
			seg = ARCH_GET_GS;
		else if (b == 0x2e || b == 0x36 || b == 0x3e || b == 0x26)
			continue;
		else
			break;
	}
	if ((ip[i] & 0xf0) == 0x40)
		rex = ip[i++];
	if (ip[i] != 0x0f || ip[i + 1] != 0x38 || ip[i + 2] != 0xf8)
		return -1;
	i += 3;
	if (pf2)
		out->kind = INSN_ENQCMD;
	else if (pf3)
		out->kind = INSN_ENQCMDS;
	else if (p66)
		out->kind = INSN_MOVDIR64B;
	else
		return -1;
	modrm = ip[i++];
	mod = modrm >> 6;
	reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
	rm = (modrm & 7) | ((rex & 1) << 3);
	if (mod == 3)
		return -1; /* the source must be memory (#UD otherwise) */
	if ((modrm & 7) == 4) {
		uint8_t sib = ip[i++];
		int scale = sib >> 6;
		int index = ((sib >> 3) & 7) | ((rex & 2) << 2);
		int base = (sib & 7) | ((rex & 1) << 3);
		if (index != 4)
			addr += (uint64_t)gregs[greg_of[index]] << scale;
		if ((sib & 7) == 5 && mod == 0) {
			memcpy(&disp, ip + i, 4);
			i += 4;
			addr += (int64_t)disp;
		} else {
			addr += (uint64_t)gregs[greg_of[base]];
		}
	} else if ((modrm & 7) == 5 && mod == 0) {
		memcpy(&disp, ip + i, 4);
		i += 4;
		rip_rel = 1;
	} else {
		addr = (uint64_t)gregs[greg_of[rm]];
	}
	if (mod == 1) {
		addr += (int64_t)(int8_t)ip[i];
		i += 1;
	} else if (mod == 2) {
		memcpy(&disp, ip + i, 4);
		i += 4;
		addr += (int64_t)disp;
	}
	out->len = i;
	if (rip_rel)
		addr = (uint64_t)gregs[REG_RIP] + (uint64_t)i + (int64_t)disp;
	out->dst = (uint64_t)gregs[greg_of[reg]];
	if (p67) {
		addr &= 0xffffffffu;
		out->dst &= 0xffffffffu;
	}
	if (seg)
		addr += seg_base(seg);
	out->src = addr;
	return 0;
}

static void chain(int sig, siginfo_t *info, void *ctx)
{
	struct sigaction *old = sig == SIGSEGV ? &old_segv : &old_ill;

	if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction) {
		old->sa_sigaction(sig, info, ctx);
		return;
	}
	if (old->sa_handler == SIG_IGN)
		return;
	if (old->sa_handler != SIG_DFL) {
		old->sa_handler(sig);
		return;
	}
	/* default action: restore it and let the instruction fault again */
	signal(sig, SIG_DFL);
}

static void trap(int sig, siginfo_t *info, void *ctx)
{
	ucontext_t *uc = ctx;
	greg_t *gregs = uc->uc_mcontext.gregs;
	struct insn insn;
	struct portal *portal;
	uint32_t msg[2 + 16];
	int32_t reply[2];
	int fd, saved_errno = errno;

	if (siov_portal_decode((const uint8_t *)gregs[REG_RIP], gregs, &insn) != 0 ||
	    insn.kind == INSN_ENQCMDS)
		goto not_ours;
	portal = find_portal(insn.dst);
	if (!portal)
		goto not_ours;
	if (sig == SIGSEGV && info->si_addr && !find_portal((uintptr_t)info->si_addr))
		goto not_ours;
	fd = portal->fd;
	gregs[REG_RIP] += insn.len;
	msg[0] = insn.kind == INSN_MOVDIR64B ? MSG_POSTED : MSG_ENQ;
	msg[1] = 64;
	memcpy(&msg[2], (const void *)insn.src, 64);
	lock(&send_lock);
	if (fd < 0 || write_all(fd, msg, sizeof(msg)) < 0) {
		reply[0] = EIO;
		reply[1] = 1;
	} else if (insn.kind == INSN_ENQCMD) {
		if (read_all(fd, reply, sizeof(reply)) < 0) {
			reply[0] = EIO;
			reply[1] = 1;
		}
	} else {
		reply[0] = 0;
		reply[1] = 0;
	}
	unlock(&send_lock);
	if (insn.kind == INSN_ENQCMD) {
		/* ENQCMD: ZF=1 means the WQ did not take it (retry) */
		if (reply[0] || reply[1])
			gregs[REG_EFL] |= 0x40;
		else
			gregs[REG_EFL] &= ~0x40L;
		__atomic_add_fetch(&stat_enq, 1, __ATOMIC_RELAXED);
	} else {
		__atomic_add_fetch(&stat_posted, 1, __ATOMIC_RELAXED);
	}
	errno = saved_errno;
	return;
not_ours:
	errno = saved_errno;
	chain(sig, info, ctx);
}

/* counters for tests: how many stores were forwarded */
unsigned long siov_portal_forwarded(int enq)
{
	return enq ? stat_enq : stat_posted;
}
