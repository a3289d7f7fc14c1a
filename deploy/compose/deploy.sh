#!/bin/sh
# Upgrades the compose deployment in the current directory to one server
# image, pinned by digest, and rolls back by itself when the new server does
# not turn healthy. The procedure is docs/upgrading.md's; this is it in one
# command, for hosts that have Docker and a POSIX shell and nothing else.
#
#   deploy.sh REPOSITORY@sha256:<64 hex>
#
# Environment: DEPLOY_TIMEOUT (seconds to turn healthy, default 120),
# DEPLOY_PRUNE_ABOVE (disk use, in percent, above which old images of the
# server are removed, default 80).
set -eu

die() {
	echo "deploy: $*" >&2
	exit 1
}

[ $# -eq 1 ] || {
	echo "usage: deploy.sh REPOSITORY@sha256:<64 hex>" >&2
	exit 2
}
new=$1
digest=${new##*@sha256:}
case $new in
*@sha256:*) ;;
*) die "$new is not pinned by digest: give REPOSITORY@sha256:<64 hex>, as \`crane digest\` prints it" ;;
esac
case $digest in
*[!0-9a-f]*) die "$new: the digest must be 64 lowercase hex digits" ;;
esac
[ ${#digest} -eq 64 ] || die "$new: the digest must be 64 lowercase hex digits"

[ -f .env ] || die "no .env in $(pwd): run deploy.sh where docker-compose.yml and .env are (docs/compose.md)"
timeout=${DEPLOY_TIMEOUT:-120}
prune_above=${DEPLOY_PRUNE_ABOVE:-80}
case $timeout$prune_above in
*[!0-9]*) die "DEPLOY_TIMEOUT and DEPLOY_PRUNE_ABOVE must be whole numbers" ;;
esac

old=$(grep '^SERVER_IMAGE=' .env || true)
[ -n "$old" ] || die ".env has no SERVER_IMAGE= line: add the image that runs now, so that a rollback knows where to go"
old=${old#SERVER_IMAGE=}

# Rewrites the SERVER_IMAGE line of .env, keeping every other line as it is.
set_image() {
	awk -v line="SERVER_IMAGE=$1" '/^SERVER_IMAGE=/ { print line; next } { print }' .env >.env.deploying
	mv .env.deploying .env
}

# Registry credentials: read, never sourced (it is data, not a script),
# and removed before anything else runs, so that the password does not
# stay on disk even when the login fails.
if [ -f .env.deploy ]; then
	registry='' user='' password=''
	while IFS='=' read -r key value; do
		case $key in
		REGISTRY) registry=$value ;;
		REGISTRY_USER) user=$value ;;
		REGISTRY_PASSWORD) password=$value ;;
		esac
	done <.env.deploy
	rm -f .env.deploy
	[ -n "$registry" ] && [ -n "$user" ] && [ -n "$password" ] ||
		die ".env.deploy needs REGISTRY, REGISTRY_USER and REGISTRY_PASSWORD lines; it was removed, write it again"
	printf '%s' "$password" | docker login --username "$user" --password-stdin "$registry" >/dev/null ||
		die "cannot log in to $registry as $user; nothing changed"
	echo "deploy: logged in to $registry as $user"
fi

umask 077
mkdir -p backups
dump=backups/before-$(date -u +%Y%m%dT%H%M%SZ).dump
docker compose exec -T db pg_dump -U app -d app -Fc >"$dump" ||
	die "cannot back up the database (is the db service running?); nothing changed"
echo "deploy: database backed up to $dump"

set_image "$new"
if ! docker compose pull --policy always server; then
	set_image "$old"
	die "cannot pull $new; .env is back on $old, nothing else changed"
fi
# --no-deps: the database runs already, and must not be recreated under
# the running server.
if ! docker compose run --rm --no-deps -T server migrate status; then
	set_image "$old"
	die "$new cannot read the database's migrations; .env is back on $old, nothing else changed"
fi

if docker compose up -d --wait --wait-timeout "$timeout"; then
	echo "deploy: $new is healthy"
	used=$(df -P "$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo .)" 2>/dev/null |
		awk 'NR == 2 { sub("%", "", $5); print $5 }')
	if [ -n "$used" ] && [ "$used" -gt "$prune_above" ]; then
		# Only images of the server's repository, never the new one or the
		# one a rollback needs; `image rm` refuses an image a container
		# uses. Volumes are never touched.
		repository=${new%@sha256:*}
		docker image ls --digests --format '{{.Repository}}@{{.Digest}}' "$repository" |
			while read -r image; do
				case $image in "$new" | "$old" | *@\<none\>) continue ;; esac
				docker image rm "$image" >/dev/null 2>&1 && echo "deploy: pruned $image"
			done
		docker image prune -f >/dev/null
	fi
	exit 0
fi

echo "deploy: $new did not turn healthy within ${timeout}s; rolling back to $old" >&2
docker compose logs --tail 5 server >&2 || true
set_image "$old"
# The old server refuses, with exit code 3, a database that a newer version
# migrated: then the backup goes back in first.
status=0
docker compose run --rm --no-deps -T server migrate status >/dev/null 2>&1 || status=$?
if [ "$status" -eq 3 ]; then
	echo "deploy: $new applied a migration; restoring $dump" >&2
	docker compose stop server
	docker compose exec -T db dropdb -U app app
	docker compose exec -T db createdb -U app app
	docker compose exec -T db pg_restore -U app -d app <"$dump"
fi
docker compose up -d --wait --wait-timeout "$timeout" ||
	die "the rollback to $old did not turn healthy either; see \`docker compose logs server\`"
die "rolled back: $old runs again; $new did not turn healthy (\`docker compose logs server\` says why)"
