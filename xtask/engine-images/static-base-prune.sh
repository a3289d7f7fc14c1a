#!/bin/sh
# Turns an mmdebstrap `extract` of base-files, netbase, tzdata and
# ca-certificates into a distroless-like static base: apt pulled in their
# dependencies (debconf, openssl, perl-base, libc6...), which a static
# binary never runs, so every file that only those brought is removed;
# then what distroless writes itself: the users root, nobody and nonroot
# (65532), their groups, /home/nonroot, /tmp, and the CA bundle that
# ca-certificates' maintainer script would have made.
set -eu
root=$1
keep="base-files netbase tzdata ca-certificates"
for deb in "$root"/var/cache/apt/archives/*.deb; do
	package=$(dpkg-deb --field "$deb" Package)
	case " $keep " in *" $package "*) continue ;; esac
	dpkg-deb --fsys-tarfile "$deb" | tar -t | while read -r path; do
		path=${path#./}
		if [ -n "$path" ] && { [ -f "$root/$path" ] || [ -L "$root/$path" ]; }; then
			rm -f "$root/$path"
		fi
	done
done
# What apt and dpkg keep, and what the extraction never filters: the
# packages' documentation.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* \
	"$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/lintian "$root"/usr/share/locale
# Directories left empty by the removal, deepest first.
find "$root/usr" "$root/etc" -depth -mindepth 1 -type d -empty -delete

mkdir -p "$root/etc/ssl/certs" "$root/home/nonroot" "$root/tmp"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
chmod 700 "$root/home/nonroot"
cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
GROUP
ln -sf /usr/share/zoneinfo/Etc/UTC "$root/etc/localtime"
