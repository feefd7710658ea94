// Function App on the Flex Consumption plan (FC1), Python 3.11, running as a user-assigned managed identity.
// The app settings below are the ONE place the deployed configuration is defined (docs/DEPLOY.md explains
// each one); they contain no keys, secrets or connection strings with credentials.

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('azd service name (azure.yaml) the function app is tagged with.')
param serviceName string

@description('Function app name.')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity.')
param identityClientId string

@description('Storage account blob endpoint, e.g. https://<account>.blob.core.windows.net/')
param storageBlobEndpoint string

@description('Storage account queue endpoint.')
param storageQueueEndpoint string

@description('Storage account table endpoint.')
param storageTableEndpoint string

@description('Blob container holding the deployment package.')
param deploymentContainerName string

@description('Application Insights connection string (ingestion endpoint; local auth is disabled on the component).')
param applicationInsightsConnectionString string

@description('Flex Consumption instance memory (MB).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Flex Consumption maximum number of instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Allow SCM (Kudu) basic-auth publishing credentials. azd and Core Tools publish with Entra ID.')
param scmBasicAuthEnabled bool = false

// --- contract settings (docs/CONTRACT.md §2) ---
param batchAccountUrl string
param batchApiVersion string
param batchTimeoutSeconds int
param terminateQueueName string
param poisonQueueName string
param maxDequeueCount int
param batchAccounts string
param terminateAllowedJobIdPrefixes string
param terminateHonorKeep bool
param terminateDryRun bool
param confirmQueueName string
param confirmAfterSeconds int
param confirmMaxChecks int
param confirmForce bool

// --- the kill switch (docs/CONTRACT.md §10) ---
param incidentQueueName string
param incidentTableName string
param killSwitchApproval string
param killSwitchDisableSchedules bool
param killSwitchScalePools bool

// --- the Python worker: threads per instance, derived in docs/SCALE.md (batchSize + newBatchThreshold + margin) ---
param pythonThreadpoolThreadCount int

// --- alert_terminate (docs/CONTRACT.md §9) and sweep_jobs ---
param alertJobIdDimension string
param alertRulesAllowed string
param alertSelectJobIdPrefix string
param alertSelectPoolId string
param alertSelectMetadata string
param alertMaxJobs int
param sweepSchedule string
param sweepMaxAgeHours string
param sweepIdleMinutes string
param sweepJobIdPrefix string
param sweepDryRun bool
param sweepMaxJobs int
param sweepAccounts string
param sweepConcurrency int
param sweepRunBudgetSeconds int

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_78:Flex Consumption offers no FTP and rejects siteConfig.ftpsState (its deprecations table); FTP publishing is refused by basicPublishingCredentialsPolicies 'ftp' below
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    keyVaultReferenceIdentity: identityId
    // No ftpsState (nor alwaysOn, linuxFxVersion, use32BitWorkerProcess, ...): Flex Consumption rejects the site
    // properties its "Flex Consumption plan deprecations" table lists (FTPS is not offered on Flex at all), and
    // tests/repo/test_infra_flex.py keeps every name of that table out of the templates. FTP publishing is
    // refused below all the same (basicPublishingCredentialsPolicies 'ftp').
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: {
    // Host storage, identity based (no AzureWebJobsStorage connection string).
    AzureWebJobsStorage__blobServiceUri: storageBlobEndpoint
    AzureWebJobsStorage__queueServiceUri: storageQueueEndpoint
    // ... also the incident table's endpoint (INCIDENT_TABLE_NAME, docs/CONTRACT.md §2, §10).
    AzureWebJobsStorage__tableServiceUri: storageTableEndpoint
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    // Telemetry, Entra-authenticated as the same identity. The worker exports the app's OpenTelemetry logs and
    // metrics to Application Insights (host.json telemetryMode OpenTelemetry), so the docs/CONTRACT.md §8
    // attributes arrive as customDimensions.
    APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
    // The worker passes this to configure_azure_monitor(logger_name=...): only the app's logger is exported.
    PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'batch_terminator'
    PYTHON_THREADPOOL_THREAD_COUNT: string(pythonThreadpoolThreadCount)
    // Batch token credential (azure-identity ManagedIdentityCredential / DefaultAzureCredential).
    AZURE_CLIENT_ID: identityClientId
    BATCH_ACCOUNT_URL: batchAccountUrl
    BATCH_API_VERSION: batchApiVersion
    BATCH_TIMEOUT_SECONDS: string(batchTimeoutSeconds)
    TERMINATE_QUEUE_NAME: terminateQueueName
    POISON_QUEUE_NAME: poisonQueueName
    AzureFunctionsJobHost__extensions__queues__maxDequeueCount: string(maxDequeueCount)
    BATCH_ACCOUNTS: batchAccounts
    TERMINATE_ALLOWED_JOB_ID_PREFIXES: terminateAllowedJobIdPrefixes
    TERMINATE_HONOR_KEEP: terminateHonorKeep ? 'true' : 'false'
    TERMINATE_DRY_RUN: terminateDryRun ? 'true' : 'false'
    CONFIRM_QUEUE_NAME: confirmQueueName
    CONFIRM_AFTER_SECONDS: string(confirmAfterSeconds)
    CONFIRM_MAX_CHECKS: string(confirmMaxChecks)
    CONFIRM_FORCE: confirmForce ? 'true' : 'false'
    INCIDENT_QUEUE_NAME: incidentQueueName
    INCIDENT_TABLE_NAME: incidentTableName
    KILL_SWITCH_APPROVAL: killSwitchApproval
    KILL_SWITCH_DISABLE_SCHEDULES: killSwitchDisableSchedules ? 'true' : 'false'
    KILL_SWITCH_SCALE_POOLS: killSwitchScalePools ? 'true' : 'false'
    ALERT_JOB_ID_DIMENSION: alertJobIdDimension
    ALERT_RULES_ALLOWED: alertRulesAllowed
    ALERT_SELECT_JOB_ID_PREFIX: alertSelectJobIdPrefix
    ALERT_SELECT_POOL_ID: alertSelectPoolId
    ALERT_SELECT_METADATA: alertSelectMetadata
    ALERT_MAX_JOBS: string(alertMaxJobs)
    SWEEP_SCHEDULE: sweepSchedule
    SWEEP_MAX_AGE_HOURS: sweepMaxAgeHours
    SWEEP_IDLE_MINUTES: sweepIdleMinutes
    SWEEP_JOB_ID_PREFIX: sweepJobIdPrefix
    SWEEP_DRY_RUN: sweepDryRun ? 'true' : 'false'
    SWEEP_MAX_JOBS: string(sweepMaxJobs)
    SWEEP_ACCOUNTS: sweepAccounts
    SWEEP_CONCURRENCY: string(sweepConcurrency)
    SWEEP_RUN_BUDGET_SECONDS: string(sweepRunBudgetSeconds)
  }
}

// No FTP at all; SCM basic auth off unless explicitly enabled.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: scmBasicAuthEnabled
  }
}

output name string = functionApp.name
output id string = functionApp.id
output defaultHostName string = functionApp.properties.defaultHostName
output planName string = plan.name
