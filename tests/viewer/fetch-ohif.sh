#!/usr/bin/env bash
# The built OHIF Viewer (npm @ohif/app ships dist/): fetched with npm's own client and checked
# against the integrity pinned in package.json. Not an `npm ci` dependency: the package's own
# dependency list does not resolve on the registry (an unpublished @ohif/i18n version), and
# only its static build is needed.
set -euo pipefail
cd "$(dirname "$0")"
version=$(node -p 'require("./package.json").config.ohif_app')
pinned=$(node -p 'require("./package.json").config.ohif_app_integrity')
if [ -f ohif/.version ] && [ "$(cat ohif/.version)" = "$version" ]; then exit 0; fi
rm -rf ohif .ohif-pack && mkdir -p .ohif-pack
npm pack --silent --json "@ohif/app@$version" --pack-destination .ohif-pack > .ohif-pack/pack.json
got=$(node -p 'require("./.ohif-pack/pack.json")[0].integrity')
if [ "$got" != "$pinned" ]; then echo "@ohif/app@$version integrity $got != pinned $pinned" >&2; exit 1; fi
mkdir -p ohif && tar -xzf .ohif-pack/*.tgz -C ohif --strip-components=1 package/dist
rm -rf .ohif-pack
echo "$version" > ohif/.version
