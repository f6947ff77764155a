/*
 * statx-shim: LD_PRELOAD workaround for old gVisor (runsc 0.0~20221219, Debian bookworm).
 *
 * That runsc rejects statx(2) with EINVAL when the flags contain AT_NO_AUTOMOUNT, which
 * coreutils passes on every call: `ls -l`, `ls PATH` and `stat` fail with "Invalid argument".
 * A seccomp rule cannot rewrite the flags, so this library, listed in /etc/ld.so.preload of the
 * sandbox root filesystem, replaces glibc's statx() wrapper: it issues the real syscall and, only
 * on that exact failure, retries once without AT_NO_AUTOMOUNT. Inside a sandbox nothing is
 * automounted, so dropping the flag does not change the result. On a runsc that accepts the flag
 * (recent gVisor releases) the retry never happens and the shim costs nothing.
 *
 * Other stat calls (stat/fstatat/lstat, which Python uses) go through newfstatat on x86_64 and
 * are not affected.
 *
 * Built by scripts/build-rootfs.sh on the host (same bookworm glibc as the image):
 *   gcc -O2 -shared -fPIC -o ROOTFS/usr/lib/sandbox/libstatx-shim.so statx-shim.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

__attribute__((visibility("default")))
int statx(int dirfd, const char *restrict path, int flags, unsigned int mask,
          struct statx *restrict buf)
{
    long r = syscall(SYS_statx, dirfd, path, flags, mask, buf);
    if (r == -1 && errno == EINVAL && (flags & AT_NO_AUTOMOUNT) != 0) {
        r = syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
    }
    return (int)r;
}
