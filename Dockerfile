# syntax=docker/dockerfile:1
# Node 24 LTS, the major the project pins for development and CI (package.json "node").

# Compiles src/ and workers/ to dist/ (npm run build) with the full dev install.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
COPY bench/package.json ./bench/
COPY scripts/patch-postgres.mjs ./scripts/
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY workers ./workers
COPY drizzle ./drizzle
RUN npm run build

# What the service runs, nothing else. The lock file names the bench/ workspace, so its
# package.json comes too (its packages are devDependencies, left out here). postinstall runs
# scripts/patch-postgres.mjs (the postgres driver's null-socket guard). --omit=optional leaves out
# the optional peers npm would otherwise add (typescript for valibot, pg for bullmq) and
# msgpackr's native accelerator.
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY bench/package.json ./bench/
COPY scripts/patch-postgres.mjs ./scripts/
RUN npm ci --omit=dev --omit=optional --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY --from=build /app/dist ./dist
USER node
EXPOSE 3000 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "dist/src/cli/healthcheck.js"]
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["start"]
