-- Dittofeed tables the shared fixture (fixture/dittofeed.sql) does not have, with exactly the
-- indexes Dittofeed's migrations give them (../shared/notes/dittofeed-queries.md), for the
-- workload index advice benchmark (bench/advice.sh).
CREATE TYPE "DBComputedPropertyType" AS ENUM ('Segment', 'UserProperty');
CREATE TABLE "ComputedPropertyPeriod" (
    "id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
    "workspaceId" uuid NOT NULL,
    "type" "DBComputedPropertyType" NOT NULL,
    "computedPropertyId" uuid NOT NULL,
    "version" text NOT NULL,
    "from" timestamp(3),
    "to" timestamp(3) NOT NULL,
    "step" text NOT NULL,
    "createdAt" timestamp(3) DEFAULT now() NOT NULL
);
CREATE INDEX "ComputedPropertyPeriod_workspaceId_type_computedPropertyId_to_idx"
    ON "ComputedPropertyPeriod" ("workspaceId", "type", "computedPropertyId", "to");

CREATE TABLE "Integration" (
    "id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
    "workspaceId" uuid NOT NULL,
    "name" text NOT NULL,
    "definition" jsonb NOT NULL,
    "enabled" boolean DEFAULT true NOT NULL,
    "createdAt" timestamp(3) DEFAULT now() NOT NULL,
    "updatedAt" timestamp(3) DEFAULT now() NOT NULL,
    "definitionUpdatedAt" timestamp(3) DEFAULT now() NOT NULL
);
CREATE UNIQUE INDEX "Integration_workspaceId_name_key" ON "Integration" ("workspaceId", "name");

CREATE TABLE "Feature" (
    "workspaceId" uuid NOT NULL,
    "name" text NOT NULL,
    "enabled" boolean DEFAULT false NOT NULL,
    "config" jsonb,
    "createdAt" timestamp(3) DEFAULT now() NOT NULL,
    "updatedAt" timestamp(3) DEFAULT now() NOT NULL
);
CREATE UNIQUE INDEX "Feature_workspaceId_name_key" ON "Feature" ("workspaceId", "name");
